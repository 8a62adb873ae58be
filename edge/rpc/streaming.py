"""A bidirectional gRPC stream as a `StreamSession`: the WebSocket's semantics over gRPC.

Each request is a frame (seq = its 0-based index on the call) handed to the scheduler like a
WebSocket frame; the stream's outbox (edge.outbox) answers each one exactly once, and every
message it sends is turned into the protocol's responses. A `Translation` says what differs
between protocols (edge.rpc.inference's InferenceService, a KServe ModelStreamInfer): which
model the first request asks for, what a request asks of the stream beside its frame, and how
a reply message becomes responses. Everything else is here, once:

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
import contextlib
import json
import logging
import time
from typing import Any, Protocol

import grpc
from aiohttp import web

from edge.appkeys import SERVICES, Services
from edge.auth import GUARD, take_stream_slot
from edge.outbox import SlowConsumer
from edge.ratelimit import CLIENTS, Slot, client_of
from edge.repository import Route, UnknownModel
from edge.rpc.guard import PRINCIPAL
from edge.stream import Stream
from edge.tokens import Refused
from edge.transports import common
from edge.transports.session import StreamSession

log = logging.getLogger("edge.grpc")

#: a frame still running when the call ends gets this long to be answered
CLOSE_GRACE_S = 1.0
Code = grpc.StatusCode


class Translation(Protocol):
    """What one streaming protocol says its own way."""

    def route(self, first: Any, default_model: str) -> Route:
        """The model the stream's first request asks for."""
        ...

    def take(self, services: Services, stream: Stream, seq: int, request: Any) -> bytes | None:
        """Apply what `request` asks of the stream (settings, a model switch); its frame's
        data, or None when the request was answered already (common.refuse_frame)."""
        ...

    def responses(self, message: dict[str, Any]) -> list[Any]:
        """The responses for one reply message of the stream (docs/protocol.md's JSON: a
        result, a drop notice naming one or more seqs, an error); none for the others."""
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
        services, context = self.services, self.context
        stream = self.stream = common.open_stream(services, self.transport, route, self._send)
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
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if not sender.done():
                await common.finish(services, stream, CLOSE_GRACE_S, reason)
            else:
                services.scheduler.withdraw(stream)
        finally:
            for t in (reader, sender, goaway):
                t.cancel()
            for t in (reader, sender, goaway):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            common.close_stream(services, stream)
            gauge.dec()
            self._closed.set()
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
                oversize = oversize + 1 if len(data) > settings.max_frame_bytes else 0
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

    async def _send(self, text: str) -> None:
        """The outbox's writer: one reply message, as the protocol's responses."""
        for response in self.translation.responses(json.loads(text)):
            try:
                await self.context.write(response)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the call is over: the client went away
                raise ConnectionError(f"gRPC write failed: {e!r}") from None


async def serve_stream(
    app: web.Application,
    context: grpc.aio.ServicerContext,
    translation: Translation,
    transport: str,
) -> None:
    """A streaming call from its first request to its end, refused first (with the WebSocket's
    reasons, as gRPC codes) while not ready, draining, busy or at a stream limit."""
    services = app[SERVICES]
    settings = services.settings
    refused = refusal(services)
    if refused is not None:
        return await _refuse(services, context, transport, *refused)
    slot = services.streams.acquire("*")  # the whole gateway's, not this process's
    if slot is None:
        return await _refuse(
            services,
            context,
            transport,
            Code.UNAVAILABLE,
            "max_streams",
            f"the gateway serves at most {settings.max_streams} streams",
        )
    own: Slot | None = None
    session = GrpcStreamSession(services, context, translation, transport)
    try:
        principal = PRINCIPAL.get()
        if principal is not None:
            try:
                own = take_stream_slot(app[GUARD], principal)
            except Refused as e:
                services.metrics.auth_refused.labels(e.reason).inc()
                return await _refuse(
                    services, context, transport, Code.RESOURCE_EXHAUSTED, e.reason, e.message
                )
        first = await _first_request(context, settings.idle_timeout_s)
        if first is grpc.aio.EOF:
            return None  # a call that sent nothing is answered with nothing
        try:
            route = translation.route(first, settings.default_model)
            services.repo.assign(route, "probe")
            services.repo.resolve(route)
        except UnknownModel as e:
            return await _refuse(
                services, context, transport, Code.NOT_FOUND, "unknown_model", str(e)
            )
        with client_of(app[CLIENTS], peer_host(context.peer())):
            services.session_opened(session)
            await session.run(route, first)
    finally:
        services.session_closed(session)
        slot.release()
        if own is not None:
            own.release()
    return None


async def _first_request(context: grpc.aio.ServicerContext, idle: float) -> Any:
    try:
        return await asyncio.wait_for(context.read(), idle or None)
    except asyncio.TimeoutError:
        await context.abort(Code.DEADLINE_EXCEEDED, f"no request for {idle:g} s")


def refusal(services: Services) -> tuple[grpc.StatusCode, str, str] | None:
    """Why a new call would be refused now (draining, not ready, busy), or None."""
    if services.draining:
        return Code.UNAVAILABLE, "draining", "the gateway is shutting down; reconnect"
    if not services.repo.ready:
        return Code.UNAVAILABLE, "not_ready", "models are still loading"
    if services.saturated:
        return Code.UNAVAILABLE, "busy", "this gateway process is behind; retry"
    return None


async def _refuse(
    services: Services,
    context: grpc.aio.ServicerContext,
    transport: str,
    code: grpc.StatusCode,
    reason: str,
    message: str,
) -> None:
    services.metrics.streams_refused.labels(transport, reason).inc()
    await context.abort(code, f"{reason}: {message}")


def peer_host(peer: str) -> str:
    """The client's address from gRPC's peer string (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`),
    written as aiohttp's `request.remote`, so one client is one client on every transport."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer
