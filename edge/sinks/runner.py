"""The owner of one sink: a bounded queue, one task that publishes from it, reconnection.

The frame path only ever calls `offer`, which appends to the queue and returns: when the
queue is full the oldest message goes, counted (`edge_sink_dropped_total{reason="queue_full"}`).
The task connects, then publishes the queue in batches, each within `timeout`; a failed
connect or publish closes the connection and tries again after an exponential backoff with
jitter, so a slow or absent broker costs the streams nothing but those counted drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from dataclasses import dataclass

from edge import codec
from edge.compat import timeout
from edge.metrics import Metrics
from edge.sinks.base import Sink

log = logging.getLogger("edge.sinks")

#: why a message was not published (the `reason` label)
REASONS = ("queue_full", "publish_failed", "shutdown")
#: messages handed to the sink at once
BATCH = 256
#: how often an idle sink checks that its connection still stands
IDLE_CHECK_S = 1.0
#: once a message is queued, how long the sink waits for more to publish with it: a batch
#: per broker round trip and a few wake-ups a second, not one per result, which is what
#: keeps the event loop's share small (docs/sinks.md, "Measured")
LINGER_S = 0.05
#: the first reconnect waits up to this long; each failure doubles it, up to retry_max_s
FIRST_RETRY_S = 0.5

_str = json.JSONEncoder(ensure_ascii=False).encode


@dataclass(slots=True)
class Item:
    """One message for the sinks: a result (or a drop notice) of one frame of one stream."""

    kind: str  # "result" | "dropped"
    session: str
    model: str  # the model's name, a topic level
    ref: str  # name@version of the model that answered; "" for a drop (none ran)
    topic: str  # the stream's topic suffix, levels separated by "/"
    seq: int
    received_at: float | None  # Unix time the gateway took the frame in (None for drops)
    answered_at: float  # Unix time the reply was handed to the stream's sender
    reply: str  # the socket's JSON for a result; the reason for a drop
    encoded: bytes | None = None

    def payload(self) -> bytes:
        """The message body (docs/sinks.md), encoded once whatever the number of sinks."""
        if self.encoded is None:
            reply = self.reply if self.kind == "result" else codec.dropped([self.seq], self.reply)
            received = "null" if self.received_at is None else f"{self.received_at:.6f}"
            self.encoded = (
                f'{{"session":{_str(self.session)},"model":{_str(self.ref or self.model)},'
                f'"seq":{self.seq},"received_at":{received},'
                f'"answered_at":{self.answered_at:.6f},"reply":{reply}}}'
            ).encode()
        return self.encoded


def backoff(attempt: int, cap: float) -> float:
    """Seconds to wait before reconnect `attempt` (1, 2, ...): doubling, capped, and drawn
    from its upper half so that processes and gateways that lost a broker together do not
    all come back at one instant."""
    ceiling = min(cap, FIRST_RETRY_S * 2 ** min(attempt - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


class SinkRunner:
    def __init__(self, sink: Sink, metrics: Metrics, *, capacity: int, retry_max_s: float) -> None:
        self.sink = sink
        target = sink.target
        self.label = target.label
        self.wants_drops = target.drops
        sep = sink.separator
        levels = target.prefix.split("/")
        self._heads = {
            "result": sep.join([*levels, "results", ""]),
            "dropped": sep.join([*levels, "dropped", ""]),
        }
        self._sep = sep
        self._queue: deque[Item] = deque()
        self._capacity = capacity
        self._retry_max = retry_max_s
        self._timeout = sink.timeout
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set by the task each time it finds the queue empty
        self._task: asyncio.Task[None] | None = None
        self._up = False
        self._published = metrics.sink_published.labels(self.label)
        self._dropped = {r: metrics.sink_dropped.labels(self.label, r) for r in REASONS}
        self._connected = metrics.sink_connected.labels(self.label)
        self._connected.set(0)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, item: Item) -> None:
        """Queue a message; never waits. A full queue loses its oldest message, counted."""
        if item.kind != "result" and not self.wants_drops:
            return
        queue = self._queue
        if len(queue) >= self._capacity:
            queue.popleft()
            self._dropped["queue_full"].inc()
        queue.append(item)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sink {self.label}")

    async def stop(self, grace: float) -> None:
        """Publish what is queued for at most `grace` seconds if connected, then stop; what
        is left is counted dropped (`shutdown`). Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._queue and self._up:
            self._drained.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                async with timeout(grace):
                    await self._drained.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._queue:
            self._dropped["shutdown"].inc(len(self._queue))
            self._queue.clear()
        self._connected.set(0)

    # -- the task ---------------------------------------------------------------------------
    async def _run(self) -> None:
        """Connect, publish, reconnect, until cancelled; the connection is closed whichever
        way it ends, also when cancelled halfway through connecting."""
        try:
            await self._serve()
        finally:
            self._up = False
            self._connected.set(0)
            await self._close_sink()

    async def _serve(self) -> None:
        attempt = 0
        while True:
            try:
                async with timeout(self._timeout):
                    await self.sink.connect()
            except Exception as e:
                attempt += 1
                await self._close_sink()
                self._say_failed(e, attempt)
                await asyncio.sleep(backoff(attempt, self._retry_max))
                continue
            log.info(
                "sink %s: connected%s",
                self.label,
                f" after {attempt} failed attempt(s)" if attempt else "",
                extra={"sink": self.label},
            )
            self._up = True
            self._connected.set(1)
            try:
                await self._pump()
            except Exception as e:
                log.warning(
                    "sink %s: connection lost (%s); reconnecting, %d message(s) queued",
                    self.label,
                    self._describe(e),
                    len(self._queue),
                    extra={"sink": self.label},
                )
            finally:
                self._up = False
                self._connected.set(0)
                await self._close_sink()
            attempt = 1
            await asyncio.sleep(backoff(attempt, self._retry_max))

    async def _pump(self) -> None:
        """Publish the queue in batches while the connection stands; raise when it fails."""
        queue = self._queue
        while True:
            if not queue:
                self._drained.set()
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    async with timeout(IDLE_CHECK_S):
                        await self._wake.wait()
                if not self.sink.connected:
                    raise ConnectionError("the broker closed the connection")
                if queue and len(queue) < BATCH:
                    await asyncio.sleep(LINGER_S)
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), BATCH))]
            try:
                out = [(self._topic(item), item.payload()) for item in batch]
                async with timeout(self._timeout):
                    await self.sink.publish(out)
            except asyncio.CancelledError:
                self._dropped["shutdown"].inc(len(batch))
                raise
            except Exception:
                self._dropped["publish_failed"].inc(len(batch))
                raise
            self._published.inc(len(batch))
            await asyncio.sleep(0)  # a full queue is published in turns with the streams

    def _topic(self, item: Item) -> str:
        topic = item.topic if self._sep == "/" else item.topic.replace("/", self._sep)
        return f"{self._heads[item.kind]}{item.model}{self._sep}{topic}"

    async def _close_sink(self) -> None:
        # a little longer than the client's own timeouts, so that its cleanup runs to the end
        with contextlib.suppress(Exception):
            async with timeout(self._timeout + 1.0):
                await self.sink.close()

    def _say_failed(self, e: BaseException, attempt: int) -> None:
        """Every failed attempt is counted; the log says the 1st, 2nd, 4th, 8th, ..."""
        if attempt & (attempt - 1):
            return
        log.error(
            "sink %s: cannot connect (attempt %d): %s; the gateway serves on, and this sink's "
            "messages queue (at most %d, the oldest dropped) until it connects; retrying",
            self.label,
            attempt,
            self._describe(e),
            self._capacity,
            extra={"sink": self.label},
        )

    def _describe(self, e: BaseException) -> str:
        if isinstance(e, asyncio.TimeoutError):
            text = f"no answer within {self._timeout:g} s"
        else:
            text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        password = self.sink.target.password
        return text.replace(password, "***") if password else text
