"""The WebSocket transport: `GET /v1/stream?model=NAME`, one binary message per frame.

Only this handler reads the socket; it never waits on inference, so the socket is drained all
the time and frames never pile up in kernel buffers. Writing is delegated to the stream's one
sender task (edge.core.outbox).

Who may connect is decided by edge.access.auth's middleware before the handler runs. An upgrade that
carried no token but offered the `edge.v1` subprotocol is let through pending, and its first
message must then be `{"type":"auth","token":"..."}` (browsers cannot set headers on a
WebSocket); until it is, the server sends nothing, not even hello.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web

from edge import codec
from edge.access import auth
from edge.core import streams as common
from edge.core.outbox import SlowConsumer
from edge.core.services import SERVICES, Services
from edge.core.session import StreamSession
from edge.core.stream import Stream
from edge.models.repository import Route, UnknownModel
from edge.settings import Settings

log = logging.getLogger("edge.websocket")

TRANSPORT = "websocket"
CLOSE_GRACE_S = 1.0


class WebSocketSession(StreamSession):
    def __init__(self, services: Services, ws: web.WebSocketResponse) -> None:
        self.services = services
        self.ws = ws
        self.stream: Stream | None = None
        self._goaway: asyncio.Event = asyncio.Event()
        self._retry_after_ms = 0
        self._closed = asyncio.Event()
        #: set by the reader when it ends the stream itself: (close code, close message)
        self._close: tuple[WSCloseCode, bytes] | None = None

    async def goaway(self, retry_after_ms: int) -> None:
        self._retry_after_ms = retry_after_ms
        self._goaway.set()
        await self._closed.wait()

    async def run(self, route: Route) -> None:
        services, ws = self.services, self.ws
        stream = self.stream = common.open_stream(services, TRANSPORT, route, ws.send_str)
        model = services.repo.resolve(stream.route)
        sender = asyncio.create_task(stream.outbox.run(), name=f"sender-{stream.id}")
        reader = asyncio.create_task(self._read(stream), name=f"reader-{stream.id}")
        ticker = asyncio.create_task(common.send_stats_periodically(stream))
        gauge = services.metrics.active_streams.labels(TRANSPORT)
        gauge.inc()
        log.info(
            "session=%s stream opened model=%s",
            stream.id,
            model.ref,
            extra={"session": stream.id, "model": model.ref, "transport": TRANSPORT},
        )
        await ws.send_str(
            codec.hello(
                stream.id,
                model.ref,
                services.settings.max_frame_bytes,
                process=services.cluster.index,
            )
        )
        close_code, close_msg, reason = WSCloseCode.OK, b"", "closed"
        goaway = asyncio.create_task(self._goaway.wait())
        try:
            done, _ = await asyncio.wait(
                {reader, sender, goaway}, return_when=asyncio.FIRST_COMPLETED
            )
            if sender in done and isinstance(sender.exception(), SlowConsumer):
                close_code, close_msg = WSCloseCode.POLICY_VIOLATION, b"not reading"
                log.warning("session=%s %s", stream.id, sender.exception())
            elif goaway in done:
                close_code, close_msg, reason = WSCloseCode.GOING_AWAY, b"going away", "shutdown"
            elif reader in done and self._close is not None and reader.exception() is None:
                close_code, close_msg = self._close
            elif reader in done and reader.exception() is not None:
                close_code, close_msg = WSCloseCode.INTERNAL_ERROR, b"internal error"
                log.error("session=%s reader failed: %r", stream.id, reader.exception())
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if not sender.done():
                await common.finish(services, stream, CLOSE_GRACE_S, reason)
                if reason == "shutdown":
                    stream.outbox.put(codec.message("goaway", retry_after_ms=self._retry_after_ms))
                    await stream.outbox.flush(CLOSE_GRACE_S)
            else:
                services.scheduler.withdraw(stream)
        finally:
            for t in (reader, sender, goaway, ticker):
                t.cancel()
            for t in (reader, sender, goaway, ticker):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            common.close_stream(services, stream)
            gauge.dec()
            with contextlib.suppress(Exception):
                await ws.close(code=close_code, message=close_msg)
            self._closed.set()
            log.info(
                "session=%s stream closed code=%d %s",
                stream.id,
                close_code,
                stream.stats.as_dict(),
                extra={"session": stream.id, "transport": TRANSPORT, "code": int(close_code)},
            )

    async def _read(self, stream: Stream) -> None:
        """Drain the socket: frames to the scheduler, text to control; ends at close."""
        services, ws = self.services, self.ws
        settings = services.settings
        seq = oversize = 0
        first = True
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    # Each frame over max_frame_bytes is answered bad_frame; a client that
                    # keeps sending them is closed with 1009 rather than answered forever.
                    oversize = oversize + 1 if len(msg.data) > settings.max_frame_bytes else 0
                    common.take_frame(services, stream, seq, msg.data, time.monotonic())
                    seq += 1
                    if 0 < settings.max_oversize_frames <= oversize:
                        log.info("session=%s %d frames too large, closing", stream.id, oversize)
                        self._close = (WSCloseCode.MESSAGE_TOO_BIG, b"frames too large")
                        return
                elif msg.type == WSMsgType.TEXT:
                    # An auth message sent first while the upgrade carried a token, or while
                    # authentication is off, is ignored: one client works against both.
                    if not (first and auth.auth_message_token(msg.data) is not None):
                        common.apply_control(services, stream, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("session=%s socket error: %s", stream.id, ws.exception())
                    return
                first = False
        except asyncio.TimeoutError:
            log.info(
                "session=%s idle for %g s, closing", stream.id, services.settings.idle_timeout_s
            )


async def handle(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    offered = auth.offered_subprotocols(request)
    if auth.SUBPROTOCOL not in offered and any(p.startswith(auth.BEARER_PROTOCOL) for p in offered):
        # We may answer only with a subprotocol the client offered, and never with the token.
        services.metrics.streams_refused.labels(TRANSPORT, "bad_subprotocol").inc()
        return web.json_response(
            {
                "error": "bad_request",
                "message": f"offer the subprotocol {auth.SUBPROTOCOL} along with bearer.<token>",
            },
            status=400,
        )
    if services.draining:
        return _refuse(services, 503, "draining", "the gateway is shutting down; reconnect")
    if not services.repo.ready:
        return _refuse(services, 503, "not_ready", "models are still loading")
    if services.saturated:
        return _refuse(services, 503, "busy", "this gateway process is behind; retry")
    try:
        route = services.repo.route(request.query.get("model", settings.default_model)).route
    except UnknownModel as e:
        services.metrics.streams_refused.labels(TRANSPORT, "unknown_model").inc()
        return web.json_response({"error": "unknown_model", "message": str(e)}, status=404)
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes * 4,
        autoclose=False,
        heartbeat=settings.heartbeat_s or None,
        receive_timeout=settings.idle_timeout_s or None,
        protocols=(auth.SUBPROTOCOL,),  # chosen when offered; a bearer.<token> never is
    )
    slot = services.streams.acquire("*")  # the whole gateway's, not this process's
    if slot is None:
        return _refuse(
            services,
            503,
            "max_streams",
            f"the gateway serves at most {settings.max_streams} streams",
        )
    try:
        await ws.prepare(request)
        if auth.pending(request) and not await _authenticate(request, ws, settings):
            return ws
        if services.draining:  # it drained while this socket was logging in
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"going away")
            return ws
        session = WebSocketSession(services, ws)
        services.session_opened(session)
        try:
            await session.run(route)
        except UnknownModel as e:  # the model went away between the check and the upgrade
            await ws.send_str(codec.error(None, "unknown_model", str(e)))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION)
        finally:
            services.session_closed(session)
        return ws
    finally:
        slot.release()


async def _authenticate(
    request: web.Request, ws: web.WebSocketResponse, settings: Settings
) -> bool:
    """First-message authentication: `{"type":"auth","token":"..."}` within auth_timeout_s.
    Anything else (a frame, another message, silence, a bad token) is answered with an error
    and closes the socket with 1008."""
    try:
        msg = await ws.receive(timeout=settings.auth_timeout_s)
    except asyncio.TimeoutError:
        auth.refuse_pending(request, "auth_timeout")
        code, text = "unauthorized", f"no auth message within {settings.auth_timeout_s:g} s"
    else:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            await ws.close()
            return False
        data = msg.data if msg.type == WSMsgType.TEXT else ""
        try:
            auth.accept_message(request, data if len(data) <= settings.max_message_bytes else "")
            return True
        except auth.Refused as e:
            code, text = e.code, e.message
    with contextlib.suppress(Exception):
        await ws.send_str(codec.error(None, code, text))
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=code.encode())
    return False


def _refuse(services: Services, status: int, reason: str, message: str) -> web.Response:
    services.metrics.streams_refused.labels(TRANSPORT, reason).inc()
    return web.json_response(
        {"error": reason, "message": message}, status=status, headers={"Retry-After": "1"}
    )
