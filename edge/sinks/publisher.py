"""Where streams meet the sinks: a tap per stream, the sinks of this serving process.

`Publisher.tap(stream)` is what a stream's outbox calls for each result it queues for its
client and each drop notice (edge/core/outbox.py): it builds one `Item` and offers it to every
sink's queue, without waiting, on the event loop. A result comes typed, with its JSON already
made on the worker that answered it (edge/core/pipeline.py), so the loop encodes nothing.
With no sink configured a stream has no tap and the frame path does nothing more. Each
serving process runs its own sinks, for its own streams.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Protocol

from edge import codec
from edge.frames import Result
from edge.metrics import Metrics
from edge.settings import Settings
from edge.sinks import kind, parse_all
from edge.sinks.runner import Item, SinkRunner

log = logging.getLogger("edge.sinks")


class Source(Protocol):
    """What a tap reads of its stream (edge.core.stream.Stream), each time it publishes."""

    @property
    def id(self) -> str: ...

    @property
    def publish(self) -> bool: ...

    @property
    def topic(self) -> str: ...

    @property
    def model_label(self) -> str: ...


class Publisher:
    """The sinks of one serving process (`process`, its number among them)."""

    def __init__(self, settings: Settings, metrics: Metrics, process: int = 0) -> None:
        name = f"edge-{socket.gethostname()}-{process}"
        self.runners = [
            SinkRunner(
                kind(t.scheme)(t, timeout=settings.sink_timeout_s, name=name),
                metrics,
                capacity=settings.sink_queue,
                retry_max_s=settings.sink_retry_max_s,
            )
            for t in parse_all(settings.sinks)
        ]
        self.wants_drops = any(r.wants_drops for r in self.runners)
        self._grace = min(2.0, settings.sink_timeout_s)

    def tap(self, stream: Source) -> StreamTap | None:
        return StreamTap(self, stream) if self.runners else None

    def offer(self, item: Item) -> None:
        for runner in self.runners:
            runner.offer(item)

    def start(self) -> None:
        for runner in self.runners:
            log.info("publishing results to sink %s", runner.label, extra={"sink": runner.label})
            runner.start()

    async def stop(self) -> None:
        """Give each sink a moment to publish what it holds, then stop it."""
        await asyncio.gather(*(r.stop(self._grace) for r in self.runners))


class StreamTap:
    """One stream's way to the sinks; reads the stream's `publish` and `topic` each time."""

    __slots__ = ("_publisher", "_stream")

    def __init__(self, publisher: Publisher, stream: Source) -> None:
        self._publisher = publisher
        self._stream = stream

    def result(self, result: Result, received_at: float, text: str | None) -> None:
        """`text`: the result's JSON as the worker made it (None: encoded here)."""
        s = self._stream
        if not s.publish:
            return
        now = time.time()
        received = now - (time.monotonic() - received_at)
        ref = result.model
        model = ref.partition("@")[0]
        reply = codec.result(result) if text is None else text
        topic = s.topic or s.id
        item = Item("result", s.id, model, ref, topic, result.seq, received, now, reply)
        self._publisher.offer(item)

    def dropped(self, seq: int, reason: str) -> None:
        s = self._stream
        if not (s.publish and self._publisher.wants_drops):
            return
        topic = s.topic or s.id
        item = Item("dropped", s.id, s.model_label, "", topic, seq, None, time.time(), reason)
        self._publisher.offer(item)
