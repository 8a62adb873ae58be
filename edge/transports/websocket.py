"""The WebSocket transport: `GET /v1/stream?model=NAME`, one binary message per frame.

Only this handler reads the socket; it never waits on inference, so the socket is drained all
the time and frames never pile up in kernel buffers. Writing is delegated to the stream's one
sender task (edge.outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web

from edge import codec
from edge.appkeys import SERVICES, Services
from edge.outbox import SlowConsumer
from edge.repository import Route, UnknownModel
from edge.stream import Stream
from edge.transports import common
from edge.transports.session import StreamSession

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
        await ws.send_str(codec.hello(stream.id, model.ref, services.settings.max_frame_bytes))
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
            services.scheduler.withdraw(stream)
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
        seq = 0
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    common.take_frame(services, stream, seq, msg.data, time.monotonic())
                    seq += 1
                elif msg.type == WSMsgType.TEXT:
                    common.apply_control(services, stream, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("session=%s socket error: %s", stream.id, ws.exception())
                    return
        except TimeoutError:
            log.info(
                "session=%s idle for %g s, closing", stream.id, services.settings.idle_timeout_s
            )


async def handle(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    if services.draining:
        return _refuse(services, 503, "draining", "the gateway is shutting down; reconnect")
    if not services.repo.ready:
        return _refuse(services, 503, "not_ready", "models are still loading")
    if len(services.sessions) >= settings.max_streams:
        return _refuse(
            services,
            503,
            "max_streams",
            f"the gateway serves at most {settings.max_streams} streams",
        )
    try:
        route = Route.parse(request.query.get("model", settings.default_model))
        services.repo.assign(route, "probe")
        services.repo.resolve(route)
    except UnknownModel as e:
        services.metrics.streams_refused.labels(TRANSPORT, "unknown_model").inc()
        return web.json_response({"error": "unknown_model", "message": str(e)}, status=404)
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes * 4,
        autoclose=False,
        heartbeat=settings.heartbeat_s or None,
        receive_timeout=settings.idle_timeout_s or None,
    )
    await ws.prepare(request)
    session = WebSocketSession(services, ws)
    services.sessions.add(session)
    try:
        await session.run(route)
    except UnknownModel as e:  # the model went away between the check and the upgrade
        await ws.send_str(codec.error(None, "unknown_model", str(e)))
        await ws.close(code=WSCloseCode.POLICY_VIOLATION)
    finally:
        services.sessions.discard(session)
    return ws


def _refuse(services: Services, status: int, reason: str, message: str) -> web.Response:
    services.metrics.streams_refused.labels(TRANSPORT, reason).inc()
    return web.json_response(
        {"error": reason, "message": message}, status=status, headers={"Retry-After": "1"}
    )
