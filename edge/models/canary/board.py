"""The canary decisions every serving process follows, kept in the shared memory
(edge/sharedmem.py).

Each process runs its own trial on the streams it serves (edge/models/canary/trial.py). The first
process
to reach a verdict on a version writes it here, under the table's lock; a process that reaches
one later, or that has none yet, takes the one written. So the gateway promotes or rolls back a
version once, whichever process saw the evidence first; a rollback seen by any process is the
gateway's. A process that starts later (a replacement) reads the decisions before it loads a
version. Rows: one per model version on trial or decided, and one per model (version "") for
the policy and the retries an operator asked for through the load call.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.canarypolicy import CanaryPolicy
from edge.models.canary.trial import Verdict
from edge.sharedmem import Shared

log = logging.getLogger("edge.canaryboard")

TRIAL, PROMOTED, ROLLED_BACK = 1, 2, 3
STATES = {TRIAL: "canary", PROMOTED: "promoted", ROLLED_BACK: "rolled_back"}
#: what a decision row keeps of the trial's figures, in this order
FIGURES = (
    "frames",
    "error_rate",
    "incumbent_error_rate",
    "latency_ratio",
    "latency_p50_ratio",
    "agreement",
    "compared",
)
#: the policy keys the load call may set, in the order a model's row keeps them
POLICY = (
    "enabled",
    "share",
    "frames",
    "max_error_rate",
    "max_latency_ratio",
    "min_agreement",
    "min_streams",
    "min_clients",
    "min_seconds",
)
#: the policy keys whose values are whole numbers
_COUNTS = ("frames", "min_streams", "min_clients")


@dataclass(frozen=True)
class Decision:
    version: str
    decision: str  # promoted | rolled_back
    reason: str
    by: int  # the serving process that decided
    figures: dict[str, float]


def _key(name: str, version: str) -> int:
    h = int.from_bytes(
        hashlib.blake2b(f"{name}@{version}".encode(), digest_size=8).digest(), "little"
    )
    return h or 1


class Board:
    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self.rows = shared.canaries

    def _find(self, name: str, version: str, create: bool = False) -> int:
        key = _key(name, version)
        keys = self.rows["key"]
        hits = np.flatnonzero(keys == key)
        if hits.size:
            return int(hits[0])
        if not create:
            return -1
        free = np.flatnonzero(keys == 0)
        if not free.size:  # full: reuse a promoted version's row, whose decision is done
            free = np.flatnonzero((self.rows["state"] == PROMOTED) & (self.rows["version"] != b""))
        if not free.size:
            log.warning(
                "canary board full (%d rows); %s@%s is not shared", len(keys), name, version
            )
            return -1
        i = int(free[0])
        self.rows[i] = 0
        self.rows["key"][i] = key
        self.rows["version"][i] = version.encode()[:32]
        self.rows["policy"][i] = math.nan
        return i

    def _decision(self, i: int) -> Decision | None:
        row = self.rows[i]
        state = int(row["state"])
        if state not in (PROMOTED, ROLLED_BACK):
            return None
        figures = {
            k: float(v) for k, v in zip(FIGURES, row["figures"][: len(FIGURES)], strict=True)
        }
        return Decision(
            row["version"].decode(), STATES[state], row["reason"].decode(errors="replace"),
            int(row["by"]), figures,
        )  # fmt: skip

    def decision(self, name: str, version: str) -> Decision | None:
        i = self._find(name, version)
        return None if i < 0 else self._decision(i)

    def rolled_back(self, name: str, versions: list[str]) -> set[str]:
        """Which of `versions` the gateway rolled back."""
        return {
            v for v in versions if (d := self.decision(name, v)) and d.decision == "rolled_back"
        }

    def on_trial(self, name: str, version: str) -> bool:
        i = self._find(name, version)
        return i >= 0 and int(self.rows["state"][i]) == TRIAL

    def open_trial(self, name: str, version: str) -> Decision | None:
        """Start (or join) the trial of `version`; the decision instead, if there is one."""
        with self._shared.locked():
            i = self._find(name, version, create=True)
            if i < 0:
                return None
            decided = self._decision(i)
            if decided is None:
                self.rows["state"][i] = TRIAL
            return decided

    def decide(self, name: str, version: str, verdict: Verdict, by: int) -> tuple[Decision, bool]:
        """Write `verdict` unless a decision is there already; the decision, and whether it
        is this one."""
        with self._shared.locked():
            i = self._find(name, version, create=True)
            if i >= 0 and (earlier := self._decision(i)) is not None:
                return earlier, False
            state = PROMOTED if verdict.decision == "promoted" else ROLLED_BACK
            figures = [float(verdict.figures.get(k, math.nan)) for k in FIGURES]
            if i >= 0:
                row = self.rows[i]
                row["state"], row["by"] = state, by
                row["figures"][: len(FIGURES)] = figures
                row["reason"] = verdict.reason.encode()[:480]
            mine = Decision(
                version,
                verdict.decision,
                verdict.reason,
                by,
                dict(zip(FIGURES, figures, strict=True)),
            )
            return mine, True

    def retry(self, name: str, version: str | None = None) -> None:
        """An operator asks for rolled-back versions (or one) to be tried again."""
        with self._shared.locked():
            for r in np.flatnonzero(self.rows["state"] == ROLLED_BACK):
                v = self.rows["version"][r].decode()
                if self.rows["key"][r] == _key(name, v) and version in (None, v):
                    self.rows["state"][r] = 0
            i = self._find(name, "", create=True)
            if i >= 0:
                self.rows["gen"][i] += 1

    def retries(self, name: str) -> int:
        """How many retries were asked for `name`: a process that saw fewer forgets its own
        rollbacks of that model and tries them again."""
        i = self._find(name, "")
        return 0 if i < 0 else int(self.rows["gen"][i])

    def set_policy(self, name: str, policy: dict[str, Any]) -> None:
        """The load call's canary settings for `name`, on top of model.toml's."""
        with self._shared.locked():
            i = self._find(name, "", create=True)
            if i >= 0:
                self.rows["policy"][i] = [float(policy.get(k, math.nan)) for k in POLICY]

    def policy(self, name: str, base: CanaryPolicy) -> CanaryPolicy:
        i = self._find(name, "")
        if i < 0:
            return base
        raw: dict[str, Any] = {}
        for k, v in zip(POLICY, self.rows["policy"][i], strict=True):
            if not math.isnan(v):
                raw[k] = bool(v) if k == "enabled" else int(v) if k in _COUNTS else float(v)
        return base.updated(raw, f"canary settings of {name}") if raw else base
