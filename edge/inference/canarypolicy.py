"""`[canary]` in model.toml (and the canary settings of the load call): how a newly arriving
version is tried, parsed and checked. Beside edge/inference/modelspec.py, which parses it with
the rest of model.toml; edge/models/canary/ runs the trials it describes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

_LIMITS = {
    "share": (0.0, 1.0),
    "max_error_rate": (0.0, 1.0),
    "min_agreement": (0.0, 1.0),
    "min_seconds": (0.0, 86400.0),
}
#: the distinct streams and clients a trial remembers (edge/models/canary/trial.py): the
#: most a minimum may ask for
MOST_SEEN = 1000
#: the integer keys and their bounds
_COUNTS: dict[str, tuple[int, int | None]] = {
    "frames": (1, None),
    "min_streams": (1, MOST_SEEN),
    "min_clients": (1, MOST_SEEN),
}


class CanaryPolicyError(ValueError):
    """A canary setting has a bad value; the message says how to fix it."""


@dataclass(frozen=True)
class CanaryPolicy:
    """How a new version is tried: `[canary]` in model.toml, or the load call's body."""

    #: a newly arriving version enters as a canary (false: it replaces the serving one at once)
    enabled: bool = True
    #: the fraction of streams the canary serves (each stream's share is fixed when it opens)
    share: float = 0.25
    #: canary frames answered before it can be promoted
    frames: int = 300
    #: canary errors allowed beyond the incumbent's error rate in the same window
    max_error_rate: float = 0.02
    #: the canary's p95 session time per frame over the incumbent's, on the same batches
    max_latency_ratio: float = 1.5
    #: the mean agreement of its detections with the incumbent's, on the same frames
    min_agreement: float = 0.8
    #: no verdict until the trial has judged frames of this many distinct streams (in the
    #: process that decides), so one stream cannot decide a version
    min_streams: int = 3
    #: ... and of this many distinct client addresses, so one client cannot
    min_clients: int = 2
    #: ... and has run this long (seconds), so a burst of frames cannot
    min_seconds: float = 60.0

    def updated(self, raw: Mapping[str, Any], where: str) -> CanaryPolicy:
        """This policy with the keys of `raw` replaced, each checked."""
        known = {f.name for f in fields(self)}
        unknown = set(raw) - known
        if unknown:
            raise CanaryPolicyError(
                f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    raise CanaryPolicyError(f"{where}: enabled must be true or false")
                values[key] = value
            elif key in _COUNTS:
                least, most = _COUNTS[key]
                whole = isinstance(value, int) and not isinstance(value, bool)
                if not whole or value < least or (most is not None and value > most):
                    bounds = f"between {least} and {most}" if most else f">= {least}"
                    raise CanaryPolicyError(f"{where}: {key} must be an integer {bounds}")
                values[key] = value
            else:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise CanaryPolicyError(f"{where}: {key} must be a number")
                lo, hi = _LIMITS.get(key, (1.0, math.inf))
                if not lo <= float(value) <= hi or (key == "share" and value == 0):
                    bounds = f"in ({lo:g}, {hi:g}]" if key == "share" else f">= {lo:g}"
                    if key in ("max_error_rate", "min_agreement", "min_seconds"):
                        bounds = f"between {lo:g} and {hi:g}"
                    raise CanaryPolicyError(f"{where}: {key} must be {bounds}, not {value!r}")
                values[key] = float(value)
        return replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
