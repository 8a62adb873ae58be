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
from edge.core.admission import Admission, NotAdmitted
from edge.core.services import SERVICES, Services
from edge.core.session import Closing, Ending, Hello, How, StreamSession
from edge.core.stream import Stream
from edge.models.repository import UnknownModel
from edge.settings import Settings
from edge.transports.http import refusal_response

log = logging.getLogger("edge.websocket")

TRANSPORT = "websocket"


#: a WebSocket close: its code and message
Close = tuple[WSCloseCode, bytes]
#: how the stream's endings close the socket (a reader's own close aside; else 1000)
CLOSES: dict[How, Close] = {
    How.SLOW_CONSUMER: (WSCloseCode.POLICY_VIOLATION, b"not reading"),
    How.GOING_AWAY: (WSCloseCode.GOING_AWAY, b"going away"),
    How.READER_FAILED: (WSCloseCode.INTERNAL_ERROR, b"internal error"),
}


class WebSocketSession(StreamSession[Close]):
    def __init__(self, services: Services, ws: web.WebSocketResponse) -> None:
        super().__init__(services, TRANSPORT, log)
        self.ws = ws

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def say_hello(self, hello: Hello) -> None:
        await self.ws.send_str(hello.text())

    async def close_wire(self, ending: Ending[Close]) -> Closing:
        code, message = ending.close or CLOSES.get(ending.how, (WSCloseCode.OK, b""))
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message)
        return Closing(f"code={int(code)}", int(code))

    async def read(self, stream: Stream) -> Close | None:
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
                        return WSCloseCode.MESSAGE_TOO_BIG, b"frames too large"
                elif msg.type == WSMsgType.TEXT:
                    # An auth message sent first while the upgrade carried a token, or while
                    # authentication is off, is ignored: one client works against both.
                    if not (first and auth.auth_message_token(msg.data) is not None):
                        common.apply_control(services, stream, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("session=%s socket error: %s", stream.id, ws.exception())
                    return None
                first = False
        except asyncio.TimeoutError:
            log.info(
                "session=%s idle for %g s, closing", stream.id, services.settings.idle_timeout_s
            )
        return None


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
    # A token-less upgrade holds only its pending-auth slots (edge.access.auth) until its auth
    # message: no stream slot, so silent sockets cannot lock authenticated clients out.
    pending = auth.pending(request)
    admission = Admission(services, TRANSPORT)
    try:
        admission.check_gateway()
        route = admission.check_model(request.query.get("model", settings.default_model))
        if not pending:
            admission.take_stream_slot(request.remote)
    except NotAdmitted as e:
        return refusal_response(e.refusal)
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes * 4,
        autoclose=False,
        heartbeat=settings.heartbeat_s or None,
        receive_timeout=settings.idle_timeout_s or None,
        protocols=(auth.SUBPROTOCOL,),  # chosen when offered; a bearer.<token> never is
    )
    with admission:
        await ws.prepare(request)
        if pending:
            if not await _authenticate(request, ws, settings):
                return ws
            try:
                admission.take_stream_slot(request.remote)
            except NotAdmitted as e:
                await _close(ws, e.refusal.reason, e.refusal.message, WSCloseCode.TRY_AGAIN_LATER)
                return ws
        if services.draining:  # it drained while this socket was logging in
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"going away")
            return ws
        session = WebSocketSession(services, ws)
        try:
            session.open(route, request.remote)
        except UnknownModel as e:  # the model went away between the check and the upgrade
            await ws.send_str(codec.error(None, "unknown_model", str(e)))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION)
            return ws
        await session.run()
        return ws


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
    await _close(ws, code, text, WSCloseCode.POLICY_VIOLATION)
    return False


async def _close(ws: web.WebSocketResponse, code: str, text: str, close: WSCloseCode) -> None:
    """Answer an error message, then close with `close`."""
    with contextlib.suppress(Exception):
        await ws.send_str(codec.error(None, code, text))
    await ws.close(code=close, message=code.encode())
