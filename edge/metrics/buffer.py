"""Per-frame metrics gathered in plain Python and published to prometheus_client in batches.

In multiprocess mode every prometheus_client write takes a lock and makes a `getpid` system
call, and a frame used to make about thirty of them. A `Buffered` metric wraps one of
prometheus_client's: `labels(...)` gives a child (cached per label values) whose `inc`,
`dec`, `set` and `observe` add to plain numbers under the child's own lock, a fraction of a
microsecond on any thread; `flush` publishes what gathered since the last flush to the
wrapped metric in one write per counter, gauge, histogram bucket and sum. The label values'
series are created in prometheus_client at first use, so they exist at zero before a flush.

Nothing is lost between flushes: a child's numbers are swapped out under its lock, so a write
racing a flush lands in this flush or the next. Each serving process flushes from its pulse
(edge/process/loopmonitor.py) every FLUSH_EVERY_S, within a beat (50 ms) when a scrape in any
process asks (edge/transports/http.py, `flush_everywhere`: the scrape waits up to a second
for them all), and at shutdown. So /metrics shows every frame answered before the scrape,
except from a serving process whose event loop lags by more than that wait: its figures are
those of its last flush, at most FLUSH_EVERY_S plus its lag old.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

#: how often each serving process publishes its buffered metrics
FLUSH_EVERY_S = 0.25


class Count:
    """A counter's child: increments gathered until the next flush."""

    __slots__ = ("_lock", "_n", "_target")

    def __init__(self, target: Any) -> None:
        self._lock, self._n, self._target = threading.Lock(), 0.0, target

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._n += amount

    def publish(self) -> None:
        with self._lock:
            n, self._n = self._n, 0.0
        if n:
            self._target.inc(n)


class Level:
    """A gauge's child: `inc`/`dec` gather a change, `set` a value; a flush publishes the
    value set (if any) and then the change since."""

    __slots__ = ("_delta", "_lock", "_set", "_target")

    def __init__(self, target: Any) -> None:
        self._lock, self._target = threading.Lock(), target
        self._delta = 0.0
        self._set: float | None = None

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._delta += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._delta -= amount

    def set(self, value: float) -> None:
        with self._lock:
            self._set, self._delta = value, 0.0

    def publish(self) -> None:
        with self._lock:
            value, delta, self._set, self._delta = self._set, self._delta, None, 0.0
        if value is not None:
            self._target.set(value)
        if delta:
            self._target.inc(delta)


class Observations:
    """A histogram's child: observations counted per bucket, and their sum."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum", "_target")

    def __init__(self, target: Any, bounds: tuple[float, ...]) -> None:
        self._lock, self._target, self._bounds = threading.Lock(), target, bounds
        self._counts = [0] * (len(bounds) + 1)  # the last: +Inf
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        i = bisect.bisect_left(self._bounds, amount)  # prometheus_client's: amount <= bound
        with self._lock:
            self._counts[i] += 1
            self._sum += amount

    def publish(self) -> None:
        with self._lock:
            counts, total = self._counts, self._sum
            if not any(counts):
                return
            self._counts, self._sum = [0] * len(counts), 0.0
        add_observations(self._target, counts, total)


def add_observations(child: Any, counts: list[int], total: float) -> None:
    """Add `counts` (per bucket, +Inf last) and their `total` to a prometheus_client histogram
    child. prometheus_client has no public call for more than one observation at a time, so
    this writes its bucket and sum values, as its `observe` does; tests/test_metrics.py holds
    it to `observe`'s output, so a release that changes them fails there, not silently."""
    buckets = child._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    child._sum.inc(total)


C = TypeVar("C", Count, Level, Observations)


class Buffered(Generic[C]):
    """A prometheus_client metric whose children gather in plain Python until `flush`."""

    def __init__(
        self, metric: Counter | Gauge | Histogram, kind: type[C], buckets: tuple[float, ...] = ()
    ) -> None:
        """`buckets`: a histogram's, as it was made with them."""
        self.metric = metric
        self._kind: type[C] = kind
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        self._bounds = tuple(b for b in buckets if not math.isinf(b))

    def labels(self, *values: str) -> C:
        try:
            return self._children[values]
        except KeyError:
            pass
        with self._lock:
            child = self._children.get(values)
            if child is None:
                target = self.metric.labels(*values)  # the series exists from now, at zero
                if self._kind is Observations:
                    _check_histogram(target, self._bounds)
                    child = Observations(target, self._bounds)  # type: ignore[assignment]
                else:
                    child = self._kind(target)  # type: ignore[call-arg]
                self._children[values] = child  # type: ignore[assignment]
            return child  # type: ignore[return-value]

    def flush(self) -> None:
        for child in list(self._children.values()):
            child.publish()


def _check_histogram(child: Any, bounds: tuple[float, ...]) -> None:
    buckets = getattr(child, "_buckets", None)
    if buckets is None or len(buckets) != len(bounds) + 1 or not hasattr(child, "_sum"):
        raise RuntimeError("this prometheus_client's histograms cannot take counts in bulk")


def counter(*args: Any, **kwargs: Any) -> Buffered[Count]:
    """A buffered prometheus_client Counter (the same arguments)."""
    return Buffered(Counter(*args, **kwargs), Count)


def gauge(*args: Any, **kwargs: Any) -> Buffered[Level]:
    """A buffered prometheus_client Gauge (the same arguments)."""
    return Buffered(Gauge(*args, **kwargs), Level)


def histogram(
    name: str, documentation: str, labels: list[str], *, buckets: tuple[float, ...], **kwargs: Any
) -> Buffered[Observations]:
    """A buffered prometheus_client Histogram (its arguments; `buckets` required)."""
    metric = Histogram(name, documentation, labels, buckets=buckets, **kwargs)
    return Buffered(metric, Observations, buckets)
