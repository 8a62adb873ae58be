"""A bidirectional gRPC stream as a `StreamSession` (edge.core.session, whose life it shares
with the WebSocket's and WebRTC's): the WebSocket's semantics over gRPC.

Each request is a frame (seq = its 0-based index on the call) handed to the scheduler like a
WebSocket frame; the stream's outbox (edge.core.outbox) answers each one exactly once, each
reply encoded as the protocol's responses. A `Translation` says what differs between protocols
(edge.transports.grpc.inference's InferenceService, a KServe ModelStreamInfer): which model the
first request asks for, what a request asks of the stream beside its frame, and, as the
stream's wire, how each typed reply becomes responses. A servicer hands its call to
edge.transports.grpc.calls.serve_stream, which admits it (or refuses it) and runs a session
here. What is gRPC's own is here, once:

- only the reader task reads the call and it never waits on inference, so requests never pile
  up in gRPC's buffers (latest-frame-wins happens in the scheduler's slot);
- only the outbox's sender task writes, one response at a time, each awaited: a client that
  does not read fills the outbox (new frames dropped `overload`) and after `send_timeout_s`
  without a response accepted the call ends with RESOURCE_EXHAUSTED, as a WebSocket is closed;
- a client that half-closes gets every answer (the frames still to run bounded by
  UNARY_TIMEOUT_S, their replies by `send_timeout_s` as on a live stream), then status OK;
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

from edge.compat import timeout
from edge.core import streams as common
from edge.core.admission import DRAINING
from edge.core.services import Services
from edge.core.session import Closing, Ending, Hello, How, StreamSession
from edge.core.stream import Stream
from edge.frames import RawInput, Wire
from edge.models.repository import Route

log = logging.getLogger("edge.grpc")

Code = grpc.StatusCode


class Translation(Wire[list[Any]], Protocol):
    """What one streaming protocol says its own way; as a `Wire`, the responses for each
    reply of the stream (none for the WebSocket's own notices)."""

    def route(self, first: Any, default_model: str) -> Route:
        """The model the stream's first request asks for."""
        ...

    async def take(
        self, services: Services, stream: Stream, seq: int, request: Any
    ) -> bytes | RawInput | None:
        """Apply what `request` asks of the stream (settings, a model switch); its frame's
        data (an encoded image, or a network input), or None when the request was answered
        already (common.refuse_frame). A costly conversion runs off the event loop."""
        ...


#: a gRPC call's end: its status and details
Close = tuple[grpc.StatusCode, str]
#: how the stream's endings end the call (a reader's own close and a slow consumer aside;
#: else OK)
STATUS: dict[How, Close] = {
    How.GOING_AWAY: (Code.UNAVAILABLE, f"going away: {DRAINING.message}"),
    How.READER_FAILED: (Code.INTERNAL, "internal error"),
}


class GrpcStreamSession(StreamSession[Close]):
    reads_after_sending = True  # half-close

    def __init__(
        self,
        services: Services,
        context: grpc.aio.ServicerContext,
        translation: Translation,
        transport: str,
        first: Any,
    ) -> None:
        super().__init__(services, transport, log)
        self.context, self.translation = context, translation
        self.wire = translation
        self._first = first

    async def say_hello(self, hello: Hello) -> None:
        await self.context.send_initial_metadata(
            (
                ("edge-session", hello.session),
                ("edge-model", hello.model),
                ("edge-process", str(hello.process)),
                ("edge-max-frame-bytes", str(hello.max_frame_bytes)),
            )
        )

    async def say_goaway(self, stream: Stream) -> None:
        """Said in the call's trailing metadata (`close_wire`), not as a message."""

    async def close_wire(self, ending: Ending[Close]) -> Closing:
        if ending.how is How.SLOW_CONSUMER:
            code, details = Code.RESOURCE_EXHAUSTED, f"not reading: {ending.error}"
        else:
            code, details = ending.close or STATUS.get(ending.how, (Code.OK, ""))
        if code == Code.UNAVAILABLE:
            self.context.set_trailing_metadata((("retry-after-ms", str(self.retry_after_ms)),))
        if code != Code.OK:
            self.context.set_code(code)
            self.context.set_details(details)
        return Closing(f"status={code.name}", code.name)

    async def read(self, stream: Stream) -> Close | None:
        """Drain the call: each request a frame, to the scheduler. At half-close, wait
        (bounded by UNARY_TIMEOUT_S) until every frame sent is answered, and end."""
        services, request = self.services, self._first
        settings = services.settings
        seq = oversize = 0
        idle = settings.idle_timeout_s or None
        while request is not grpc.aio.EOF:
            received_at = time.monotonic()
            data = await self.translation.take(services, stream, seq, request)
            if data is not None:
                # As on the WebSocket: each oversize frame is answered bad_frame; a client
                # that keeps sending them is cut off rather than answered for ever.
                big = isinstance(data, bytes) and len(data) > settings.max_frame_bytes
                oversize = oversize + 1 if big else 0
                common.take_frame(services, stream, seq, data, received_at)
                if 0 < settings.max_oversize_frames <= oversize:
                    log.info("session=%s %d frames too large, closing", stream.id, oversize)
                    return Code.RESOURCE_EXHAUSTED, "frames too large"
            seq += 1
            try:  # a timeout scope, not wait_for: no task of its own for every request
                async with timeout(idle):
                    request = await self.context.read()
            except asyncio.TimeoutError:
                log.info("session=%s idle for %g s, closing", stream.id, settings.idle_timeout_s)
                return Code.DEADLINE_EXCEEDED, f"no request for {idle:g} s"
        await common.settle(services, stream, time.monotonic() + common.UNARY_TIMEOUT_S)
        return None

    async def send(self, responses: list[Any]) -> None:
        """The outbox's writer: one reply, as the protocol's responses."""
        for response in responses:
            try:
                await self.context.write(response)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the call is over: the client went away
                raise ConnectionError(f"gRPC write failed: {e!r}") from None
