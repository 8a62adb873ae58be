"""Canary trials: a new model version serves a share of streams while every frame it answers
is also run on the version it would replace, and a verdict is reached from the figures.

The figures, per trial (docs/models.md, "Canary rollout"):

- **error rate**: canary frames answered with an inference or postprocess error, against the
  incumbent's error rate on the frames it served in the same window;
- **latency ratio**: the canary's p95 cost per frame over the incumbent's p95 on the same
  batches, each run right after the other on the same worker thread (paired, so the load of
  the moment weighs on both), and the same ratio of the medians; a version is too slow when
  either is over the limit. The cost is `LoadedModel.run_costed`'s: the worker's CPU time on a
  single-threaded CPU session, else the seconds. With the seconds, the waits for a core and
  for the interpreter lock add the same milliseconds to both versions' runs on a busy host
  and pull both ratios towards 1 (on the shared 2-core box, a version with 3 to 4 times the
  work showed p95 ratios of 2.0 to 2.4, and a copy of the serving version once a median ratio
  of 2.1); with the CPU time, 2.8 to 4.1 and 0.98 to 1.05 (docs/benchmarks.md).
- **agreement**: the mean agreement of the canary's detections with the incumbent's on the
  same frames (`edge.models.shadow.agree`, 0 to 1).

It is promoted once it has answered `frames` frames within every limit, and rolled back as
soon as the evidence is decisive: when the errors or the disagreement already exceed what the
whole budget allows, or when, after a quarter of the budget, the median ratio is over the
limit (the median of that many runs is not moved by a few slow ones). Only the first verdict
is returned.

No verdict either way until the evidence comes from more than one client: the trial has
judged frames of `min_streams` distinct streams from `min_clients` distinct client addresses
and has run `min_seconds`; until then it keeps collecting. These are what this process saw:
each process runs its own trial (edge/models/canary/canaries.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.inference.canarypolicy import MOST_SEEN, CanaryPolicy

#: a limit met exactly is met, whatever the rounding of (1 - 0.8) x 100
_EPS = 1e-9


@dataclass(frozen=True)
class Verdict:
    decision: str  # promoted | rolled_back
    reason: str
    figures: dict[str, float]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


class Trial:
    """The evidence one serving process gathers on a canary; fed by worker threads."""

    def __init__(self, policy: CanaryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        #: the distinct streams and client addresses whose canary frames it judged (up to MOST_SEEN)
        self._streams: set[str] = set()
        self._clients: set[str] = set()
        self.served = self.errors = 0  # canary frames, and those answered with an error
        self.incumbent_served = self.incumbent_errors = 0
        self.compared = 0  # canary frames whose detections were compared with the incumbent's
        self._agreement = 0.0
        #: per compared batch, session seconds per frame: the canary's and the incumbent's
        self._canary_s: list[float] = []
        self._incumbent_s: list[float] = []
        self.verdict: Verdict | None = None

    def incumbent_batch(self, frames: int, errors: int) -> None:
        with self._lock:
            self.incumbent_served += frames
            self.incumbent_errors += errors

    def canary_batch(
        self,
        frames: int,
        errors: int,
        agreements: Sequence[float] = (),
        seconds: tuple[float, float] | None = None,
        sources: Iterable[tuple[str, str]] = (),
    ) -> Verdict | None:
        """Record one canary batch: its frames, those that failed, the agreement of each
        compared frame, (canary, incumbent) session seconds per frame, and the (stream id,
        client address) of each frame. Returns the verdict the first time one is reached,
        else None."""
        with self._lock:
            if self.verdict is not None:
                return None
            for stream, client in sources:
                if len(self._streams) < MOST_SEEN:
                    self._streams.add(stream)
                if len(self._clients) < MOST_SEEN:
                    self._clients.add(client)
            self.served += frames
            self.errors += errors
            self.compared += len(agreements)
            self._agreement += sum(agreements)
            if seconds is not None and len(self._canary_s) < 4 * self.policy.frames:
                self._canary_s.append(seconds[0])
                self._incumbent_s.append(seconds[1])
            self.verdict = self._judge()
            return self.verdict

    def figures(self) -> dict[str, float]:
        with self._lock:
            return self._figures()

    def _figures(self) -> dict[str, float]:
        canary_p95 = percentile(self._canary_s, 95)
        incumbent_p95 = percentile(self._incumbent_s, 95)
        canary_p50 = percentile(self._canary_s, 50)
        incumbent_p50 = percentile(self._incumbent_s, 50)
        return {
            "frames": self.served,
            "errors": self.errors,
            "error_rate": self.errors / self.served if self.served else 0.0,
            "incumbent_error_rate": self._incumbent_rate(),
            "compared": self.compared,
            "agreement": self._agreement / self.compared if self.compared else math.nan,
            "latency_p95_ms": canary_p95 * 1e3,
            "incumbent_latency_p95_ms": incumbent_p95 * 1e3,
            "latency_ratio": canary_p95 / incumbent_p95 if incumbent_p95 > 0 else math.nan,
            "latency_p50_ratio": canary_p50 / incumbent_p50 if incumbent_p50 > 0 else math.nan,
            "streams": len(self._streams),
            "clients": len(self._clients),
            "seconds": self._clock() - self._started,
        }

    def _incumbent_rate(self) -> float:
        return self.incumbent_errors / self.incumbent_served if self.incumbent_served else 0.0

    def _heard_enough(self, f: dict[str, float]) -> bool:
        """Whether the evidence is broad enough for any verdict: enough distinct streams and
        clients, over enough time."""
        p = self.policy
        return (
            f["streams"] >= p.min_streams
            and f["clients"] >= p.min_clients
            and f["seconds"] >= p.min_seconds
        )

    def _judge(self) -> Verdict | None:
        p, f = self.policy, self._figures()
        if not self._heard_enough(f):
            return None  # keep collecting
        if self.served < p.frames:
            return self._judge_early(f)
        return self._judge_budget(f)

    def _judge_early(self, f: dict[str, float]) -> Verdict | None:
        """Decisive before the budget is spent: no outcome of the frames left could pass."""
        p, budget = self.policy, self.policy.frames
        error_limit = p.max_error_rate + self._incumbent_rate()
        if self.errors > error_limit * budget + _EPS:
            return self._fail(f, [self._error_text(f, error_limit, early=True)])
        if self.compared - self._agreement > (1 - p.min_agreement) * budget + _EPS:
            return self._fail(f, [self._agreement_text(f, early=True)])
        if len(self._canary_s) >= max(10, budget // 4) and (
            f["latency_p50_ratio"] > p.max_latency_ratio
        ):
            return self._fail(f, [self._latency_text(f, early=True)])
        return None

    def _judge_budget(self, f: dict[str, float]) -> Verdict:
        """The budget is spent (or more, while the minimums were not met): every limit, on
        every frame judged."""
        p = self.policy
        error_limit = p.max_error_rate + self._incumbent_rate()
        ratio, median = f["latency_ratio"], f["latency_p50_ratio"]
        failed = []
        if f["error_rate"] > error_limit + _EPS:
            failed.append(self._error_text(f, error_limit))
        if not self.compared or f["agreement"] < p.min_agreement - _EPS:
            failed.append(self._agreement_text(f))
        if not max(ratio, median) <= p.max_latency_ratio:  # NaN (nothing compared) fails
            failed.append(self._latency_text(f))
        if failed:
            return self._fail(f, failed)
        return Verdict(
            "promoted",
            f"passed {self.served} frames: error rate {f['error_rate']:.1%} (incumbent "
            f"{f['incumbent_error_rate']:.1%}), latency ratio p95 {ratio:.2f} and median "
            f"{median:.2f} (limit {p.max_latency_ratio:g}), agreement "
            f"{f['agreement']:.3f} (at least {p.min_agreement:g}); from {f['streams']:g} "
            f"streams of {f['clients']:g} clients over {f['seconds']:.0f} s",
            f,
        )

    def _fail(self, f: dict[str, float], reasons: list[str]) -> Verdict:
        return Verdict("rolled_back", "; ".join(reasons), f)

    def _error_text(self, f: dict[str, float], limit: float, early: bool = False) -> str:
        if early:
            return (
                f"errors: {self.errors} of {self.served} frames failed, more than "
                f"{limit:.1%} of the {self.policy.frames}-frame budget allows (incumbent "
                f"{f['incumbent_error_rate']:.1%})"
            )
        return f"errors: rate {f['error_rate']:.1%} over the limit {limit:.1%}"

    def _agreement_text(self, f: dict[str, float], early: bool = False) -> str:
        p = self.policy
        if early:
            return (
                f"agreement: {f['agreement']:.3f} on {self.compared} frames; the "
                f"{p.frames}-frame budget can no longer reach {p.min_agreement:g}"
            )
        return f"agreement: {f['agreement']:.3f} under {p.min_agreement:g}"

    def _latency_text(self, f: dict[str, float], early: bool = False) -> str:
        p = self.policy
        return (
            f"latency: p95 {f['latency_p95_ms']:.2f} ms against the incumbent's "
            f"{f['incumbent_latency_p95_ms']:.2f} ms on the same batches; ratio p95 "
            f"{f['latency_ratio']:.2f}, median {f['latency_p50_ratio']:.2f}, limit "
            f"{p.max_latency_ratio:g}"
            + (f" (after {len(self._canary_s)} batches)" if early else "")
        )
