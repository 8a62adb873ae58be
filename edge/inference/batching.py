"""How many frames a batch may hold: `max_batch` is a ceiling, the size is measured.

Whether batching pays depends on the hardware, not the model: on a GPU a batch of 8 costs
little more than one frame, while on a small CPU a batch of two can cost more per frame than
two single frames (bench/stream.py --baseline raw-batch shows both). So for each model version
the batcher keeps a moving average of the inference time per frame at each batch size it has
run, and gathers up to the size with the lowest one. The candidates are the powers of two up to
`max_batch` (and `max_batch`): first each is tried in turn until it has `MIN_SAMPLES` batches
(or `EXPLORE_ROUNDS` rounds have passed, for sizes too few streams ever fill), then one gather
in `PROBE_EVERY` tries a candidate other than the best, so the choice follows the machine when
its load or clocks change. `batching = "max"` in model.toml turns measuring off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

PROBE_EVERY = 16  # one gather in this many runs a candidate other than the best
MIN_SAMPLES = 8  # batches of a size before its cost is trusted
EXPLORE_ROUNDS = 4  # exploring ends after this many times MIN_SAMPLES per candidate
ALPHA = 0.1  # weight of the newest batch in the moving average


class BatchSizer:
    """The batch limit for one model version: the measured best, probing the others."""

    def __init__(
        self,
        max_batch: int,
        *,
        measured: bool = True,
        on_change: Callable[[int, int, dict[int, float]], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.measured = measured and max_batch > 1
        self.candidates = sorted({1 << k for k in range(max_batch.bit_length())} | {max_batch})
        self.candidates = [c for c in self.candidates if c <= max_batch]
        self.best = max_batch
        self._cost: dict[int, float] = {}  # batch size -> seconds of inference per frame
        self._count: dict[int, int] = {}
        self._gathers = 0
        self._explored = not self.measured
        self._explore_budget = EXPLORE_ROUNDS * MIN_SAMPLES * len(self.candidates)
        self._probe = 0
        self._on_change = on_change
        self._lock = threading.Lock()

    def limit(self) -> int:
        """The most frames the next batch may gather."""
        if not self.measured:
            return self.max_batch
        change = None
        with self._lock:
            self._gathers += 1
            if not self._explored:
                untried = [c for c in self.candidates if self._count.get(c, 0) < MIN_SAMPLES]
                if untried and self._gathers <= self._explore_budget:
                    return untried[self._gathers % len(untried)]
                self._explored = True
                change = self._choose()
            if self._gathers % PROBE_EVERY:
                size = self.best
            else:
                others = [c for c in self.candidates if c != self.best]
                self._probe = (self._probe + 1) % len(others)
                size = others[self._probe]
        if change is not None and self._on_change is not None:
            self._on_change(*change)
        return size

    def record(self, size: int, seconds: float) -> None:
        """One batch of `size` frames took `seconds` of inference."""
        if not self.measured or size < 1:
            return
        per_frame = seconds / size
        with self._lock:
            n = self._count.get(size, 0) + 1
            self._count[size] = n
            if n == 1:
                return  # a size's first run may pick kernels or grow buffers: not its cost
            old = self._cost.get(size)
            # the first samples average plainly, then the average moves
            a = max(ALPHA, 1.0 / (n - 1))
            self._cost[size] = per_frame if old is None else old + a * (per_frame - old)
            if not self._explored:
                return
            change = self._choose()
        if change is not None and self._on_change is not None:
            self._on_change(*change)

    def _choose(self) -> tuple[int, int, dict[int, float]] | None:
        """Make the cheapest trusted size the best; say so if it changed (lock held)."""
        trusted = {s: c for s, c in self._cost.items() if self._count[s] >= MIN_SAMPLES}
        if not trusted:
            return None
        best = min(trusted, key=trusted.__getitem__)
        if best == self.best:
            return None
        before, self.best = self.best, best
        return before, best, trusted

    def costs(self) -> dict[int, float]:
        """Measured inference milliseconds per frame by batch size."""
        with self._lock:
            return {s: round(c * 1e3, 3) for s, c in sorted(self._cost.items())}
