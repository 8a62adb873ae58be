"""A bidirectional gRPC stream as a `StreamSession`: the WebSocket's semantics over gRPC.

Each request is a frame (seq = its 0-based index on the call) handed to the scheduler like a
WebSocket frame; the stream's outbox (edge.core.outbox) answers each one exactly once, each
reply encoded as the protocol's responses. A `Translation` says what differs between protocols
(edge.transports.grpc.inference's InferenceService, a KServe ModelStreamInfer): which model the
first request asks for, what a request asks of the stream beside its frame, and, as the
stream's wire, how each typed reply becomes responses. A servicer hands its call to
edge.transports.grpc.calls.serve_stream,
which admits it (or refuses it) and runs a session here. Everything else is here, once:

- only the reader task reads the call and it never waits on inference, so requests never pile
  up in gRPC's buffers (latest-frame-wins happens in the scheduler's slot);
- only the outbox's sender task writes, one response at a time, each awaited: a client that
  does not read fills the outbox (new frames dropped `overload`) and after `send_timeout_s`
  without a response accepted the call ends with RESOURCE_EXHAUSTED, as a WebSocket is closed;
- a client that half-closes gets every answer (bounded by UNARY_TIMEOUT_S), then status OK;
- the drain answers every frame taken and ends the call with UNAVAILABLE and the trailing
  metadata `retry-after-ms`, as the WebSocket's goaway and 1001;
- `max_oversize_frames` frames in a row over `max_frame_bytes` end it with RESOURCE_EXHAUSTED
  (a request over 4 x max_frame_bytes is refused by gRPC itself, with the same code), and
  `idle_timeout_s` without a request with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import grpc

from edge.core import streams as common
from edge.core.outbox import SlowConsumer
from edge.core.services import Services
from edge.core.session import StreamSession
from edge.core.stream import Stream
from edge.frames import RawInput, Wire
from edge.models.repository import Route

log = logging.getLogger("edge.grpc")

#: a frame still running when the call ends gets this long to be answered
CLOSE_GRACE_S = 1.0
Code = grpc.StatusCode


class Translation(Wire[list[Any]], Protocol):
    """What one streaming protocol says its own way; as a `Wire`, the responses for each
    reply of the stream (none for the WebSocket's own notices)."""

    def route(self, first: Any, default_model: str) -> Route:
        """The model the stream's first request asks for."""
        ...

    def take(
        self, services: Services, stream: Stream, seq: int, request: Any
    ) -> bytes | RawInput | None:
        """Apply what `request` asks of the stream (settings, a model switch); its frame's
        data (an encoded image, or a network input), or None when the request was answered
        already (common.refuse_frame)."""
        ...


class GrpcStreamSession(StreamSession):
    def __init__(
        self,
        services: Services,
        context: grpc.aio.ServicerContext,
        translation: Translation,
        transport: str,
    ) -> None:
        self.services, self.context, self.translation = services, context, translation
        self.transport = transport
        self.stream: Stream | None = None
        self._goaway = asyncio.Event()
        self._retry_after_ms = 0
        self._closed = asyncio.Event()
        #: set by the reader when it ends the call itself: (status, details)
        self._end: tuple[grpc.StatusCode, str] | None = None
        self._half_closed = False

    async def goaway(self, retry_after_ms: int) -> None:
        self._retry_after_ms = retry_after_ms
        self._goaway.set()
        await self._closed.wait()

    async def run(self, route: Route, first: Any) -> None:
        """Serve the call from its `first` request to its end; the call's status is set."""
        try:
            await self._run(route, first)
        finally:
            self._closed.set()  # whatever happened: the drain waits on it

    async def _run(self, route: Route, first: Any) -> None:
        services, context = self.services, self.context
        stream = self.stream = common.open_stream(
            services, self.transport, route, self._send, wire=self.translation
        )
        model = services.repo.resolve(stream.route)
        await context.send_initial_metadata(
            (
                ("edge-session", stream.id),
                ("edge-model", model.ref),
                ("edge-process", str(services.cluster.index)),
                ("edge-max-frame-bytes", str(services.settings.max_frame_bytes)),
            )
        )
        sender = asyncio.create_task(stream.outbox.run(), name=f"sender-{stream.id}")
        reader = asyncio.create_task(self._read(stream, first), name=f"reader-{stream.id}")
        goaway = asyncio.create_task(self._goaway.wait())
        gauge = services.metrics.active_streams.labels(self.transport)
        gauge.inc()
        log.info(
            "session=%s stream opened model=%s",
            stream.id,
            model.ref,
            extra={"session": stream.id, "model": model.ref, "transport": self.transport},
        )
        code, details, reason = Code.OK, "", "closed"
        try:
            done, _ = await asyncio.wait(
                {reader, sender, goaway}, return_when=asyncio.FIRST_COMPLETED
            )
            if sender in done and isinstance(sender.exception(), SlowConsumer):
                code, details = Code.RESOURCE_EXHAUSTED, f"not reading: {sender.exception()}"
                log.warning("session=%s %s", stream.id, sender.exception())
            elif goaway in done:
                code, reason = Code.UNAVAILABLE, "shutdown"
                details = "going away: the gateway is shutting down; reconnect"
            elif reader in done and reader.exception() is not None:
                code, details = Code.INTERNAL, "internal error"
                log.error("session=%s reader failed: %r", stream.id, reader.exception())
            elif reader in done and self._end is not None:
                code, details = self._end
            if self._half_closed and code == Code.OK:
                await self._answer_all(stream, sender)
                if self._goaway.is_set():
                    code, reason = Code.UNAVAILABLE, "shutdown"
                    details = "going away: the gateway is shutting down; reconnect"
            reader.cancel()
            await _reap([reader])
            if not sender.done():
                await common.finish(services, stream, CLOSE_GRACE_S, reason)
            else:
                services.scheduler.withdraw(stream)
        finally:
            for t in (reader, sender, goaway):
                t.cancel()
            await _reap([reader, sender, goaway])
            common.close_stream(services, stream)
            gauge.dec()
            log.info(
                "session=%s stream closed status=%s %s",
                stream.id,
                code.name,
                stream.stats.as_dict(),
                extra={"session": stream.id, "transport": self.transport, "code": code.name},
            )
        if code == Code.UNAVAILABLE:
            context.set_trailing_metadata((("retry-after-ms", str(self._retry_after_ms)),))
        if code != Code.OK:
            context.set_code(code)
            context.set_details(details)

    async def _answer_all(self, stream: Stream, sender: asyncio.Task[None]) -> None:
        """The client half-closed: wait (bounded) until every frame it sent is answered."""
        deadline = time.monotonic() + common.UNARY_TIMEOUT_S
        while not self.services.scheduler.is_idle(stream) and time.monotonic() < deadline:
            if sender.done() or self._goaway.is_set():
                return
            await asyncio.sleep(0.005)

    async def _read(self, stream: Stream, request: Any) -> None:
        """Drain the call: each request a frame, to the scheduler; ends at half-close."""
        services = self.services
        settings = services.settings
        seq = oversize = 0
        idle = settings.idle_timeout_s or None
        while request is not grpc.aio.EOF:
            received_at = time.monotonic()
            data = self.translation.take(services, stream, seq, request)
            if data is not None:
                # As on the WebSocket: each oversize frame is answered bad_frame; a client
                # that keeps sending them is cut off rather than answered for ever.
                big = isinstance(data, bytes) and len(data) > settings.max_frame_bytes
                oversize = oversize + 1 if big else 0
                common.take_frame(services, stream, seq, data, received_at)
                if 0 < settings.max_oversize_frames <= oversize:
                    log.info("session=%s %d frames too large, closing", stream.id, oversize)
                    self._end = (Code.RESOURCE_EXHAUSTED, "frames too large")
                    return
            seq += 1
            try:
                request = await asyncio.wait_for(self.context.read(), idle)
            except asyncio.TimeoutError:
                log.info("session=%s idle for %g s, closing", stream.id, settings.idle_timeout_s)
                self._end = (Code.DEADLINE_EXCEEDED, f"no request for {idle:g} s")
                return
        self._half_closed = True

    async def _send(self, responses: list[Any]) -> None:
        """The outbox's writer: one reply, as the protocol's responses."""
        for response in responses:
            try:
                await self.context.write(response)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the call is over: the client went away
                raise ConnectionError(f"gRPC write failed: {e!r}") from None


async def _reap(tasks: list[asyncio.Task[Any]]) -> None:
    """Await cancelled tasks, for at most CLOSE_GRACE_S. A read that grpcio keeps pending
    while the call's writes are stalled by flow control (a client that reads nothing) does
    not end on cancel; it ends with the call, once the handler returns, so it is left to
    that, its outcome collected then."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, stalled = await asyncio.wait(pending, timeout=CLOSE_GRACE_S)
        for t in stalled:
            log.debug("task %s ends with its call", t.get_name())
            t.add_done_callback(_collect)
    for t in tasks:
        if t.done():
            _collect(t)


def _collect(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # seen: the session reported it already, or it is moot now
