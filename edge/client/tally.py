"""The client's books: every frame the source gave is sent or skipped, and every frame sent
gets exactly one answer (a result, a drop notice, an error, or `lost` when its connection
ended first). `edge stream` prints them as its summary."""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: latencies kept for the percentiles: the most recent ones
LATENCY_WINDOW = 512


@dataclass
class Tally:
    read: int = 0  # frames the source gave
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why: superseded, stale, unsent
    results: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> frames (incl. lost)
    errors: int = 0  # frames answered with an error
    connections: int = 0
    reconnects: int = 0
    refusals: int = 0  # upgrades answered 429/503
    unread: int = 0  # WebRTC replies discarded because the caller did not keep up
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    @property
    def answered(self) -> int:
        return self.results + sum(self.dropped.values()) + self.errors

    def latency_percentiles(self) -> tuple[float, float] | None:
        """(p50, p95) over the most recent results, in ms; None before the first."""
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0], self.latencies_ms[0]
        cuts = statistics.quantiles(self.latencies_ms, n=20, method="inclusive")
        return cuts[9], cuts[18]

    def as_dict(self) -> dict[str, Any]:
        p = self.latency_percentiles()
        return {
            "frames_read": self.read,
            "sent": self.sent,
            "skipped": sum(self.skipped.values()),
            "skipped_by": dict(self.skipped),
            "results": self.results,
            "dropped": dict(self.dropped),
            "errors": self.errors,
            "unanswered": self.sent - self.answered,
            "connections": self.connections,
            "reconnects": self.reconnects,
            "refusals": self.refusals,
            "unread": self.unread,
            "latency_p50_ms": None if p is None else round(p[0], 3),
            "latency_p95_ms": None if p is None else round(p[1], 3),
        }
