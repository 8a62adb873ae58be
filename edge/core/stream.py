"""One client stream as the pipeline sees it, whatever transport carries it.

The transport owns the object; the scheduler's lock guards the fields marked so; the rest is
touched only on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.core.outbox import Outbox
from edge.frames import Frame
from edge.inference.tracking import Tracker
from edge.models.repository import Route


@dataclass
class StreamStats:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        avg = self.latency_sum_ms / self.processed if self.processed else 0.0
        return {
            "received": self.received,
            "processed": self.processed,
            "dropped": self.dropped,
            "errors": self.errors,
            "avg_latency_ms": round(avg, 3),
        }


@dataclass(eq=False)
class Stream:
    id: str
    transport: str
    route: Route
    outbox: Outbox
    threshold: float | None = None  # None: the model's default
    max_age_s: float | None = None  # None: no deadline beyond latest-frame-wins
    stats_every_s: float = 0.0  # periodic stats messages; 0: only on request
    publish: bool = True  # results go to the sinks (edge/sinks), if there are any
    topic: str = ""  # the stream's topic suffix at the sinks; "": its session id
    client: str = ""  # the client's address (as aiohttp's request.remote); "": unknown
    # guarded by the scheduler's lock
    slot: Frame | None = None
    busy: bool = False
    queued: bool = False
    closed: bool = False
    # the worker serving its frame (at most one in flight), or the scheduler when it
    # closes: edge/core/tracks.py
    tracker: Tracker | None = None
    # event loop only
    stats: StreamStats = field(default_factory=StreamStats)
    model_label: str = ""

    @property
    def idle(self) -> bool:
        return self.slot is None and not self.busy
