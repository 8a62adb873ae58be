"""The WebRTC transport: `POST /v1/webrtc/offer`; the camera comes as a video track, replies go
back as JSON text on a DataChannel named `results`, in the WebSocket's schema (edge.codec).

Signalling is one HTTP exchange: `{"sdp", "type": "offer", "model"?, "annotate"?}` in,
`{"sdp", "type": "answer", "session", "model"}` out, no trickle ICE. The session (edge.transports.
rtcsession) then lives on in `Peers`, which the app owns: `peer_connections` is its
cleanup_ctx, and at shutdown every session still open is closed there, after `drain` told
each one goaway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer
from aiortc import sdp as aiortc_sdp

from edge import codec
from edge.access import auth
from edge.core.admission import DRAINING, Admission, Kind, NotAdmitted, Refusal, unknown_model
from edge.core.services import SERVICES, Services
from edge.models.repository import Route, UnknownModel
from edge.settings import Settings, SettingsError
from edge.transports.http import read_body, refusal_response
from edge.transports.webrtc import candidates
from edge.transports.webrtc.session import TRANSPORT, Offer, WebRTCSession

log = logging.getLogger("edge.webrtc")

MAX_OFFER_BYTES = 64 * 1024
_OFFER_KEYS = {"sdp", "type", "model", "annotate"}


class BadOffer(ValueError):
    """An offer we cannot answer; the message says what to fix."""


class Peers:
    """Every WebRTC session of one app and the task that runs it; all closed at shutdown."""

    def __init__(self, configuration: RTCConfiguration, draw: ThreadPoolExecutor) -> None:
        self.configuration = configuration
        self.draw = draw  # draws the annotated return tracks
        self.sessions: set[WebRTCSession] = set()
        self._runs: dict[WebRTCSession, asyncio.Task[None]] = {}
        self.closed = False

    def open(
        self, services: Services, route: Route, offer: Offer, client: str | None
    ) -> WebRTCSession:
        session = WebRTCSession(
            services, offer, self.configuration, self.draw, self.sessions.discard
        )
        session.open(route, client)  # UnknownModel
        self.sessions.add(session)
        return session

    def start(self, session: WebRTCSession) -> None:
        task = asyncio.create_task(session.run(), name=f"webrtc-session-{session.id}")
        self._runs[session] = task
        task.add_done_callback(lambda _: self._runs.pop(session, None))

    async def close(self) -> None:
        self.closed = True
        await asyncio.gather(*(s.close() for s in list(self.sessions)), return_exceptions=True)
        await asyncio.gather(*self._runs.values(), return_exceptions=True)


PEERS = web.AppKey("webrtc_peers", Peers)


async def peer_connections(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the transport's state; at shutdown every peer connection is closed."""
    configuration = ice_configuration(app[SERVICES].settings)
    draw = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-annotate")
    peers = app[PEERS] = Peers(configuration, draw)
    try:
        yield
    finally:
        await peers.close()
        draw.shutdown(wait=True, cancel_futures=True)


def ice_configuration(settings: Settings) -> RTCConfiguration:
    """STUN and TURN servers from the settings; with none set, none at all (aiortc would
    otherwise use a public STUN server)."""
    servers = []
    for url in settings.stun_servers:
        if not url.startswith(("stun:", "stuns:")):
            raise SettingsError(f"stun_servers: {url!r} must look like stun:host:port")
        servers.append(RTCIceServer(urls=url))
    for url in settings.turn_servers:
        scheme, _, rest = url.partition(":")
        if scheme not in ("turn", "turns") or not rest:
            raise SettingsError(  # never echo the value: it may hold a password
                "turn_servers: each entry must look like turn:user:password@host:port or "
                "turns:user:password@host:port"
            )
        creds, at, host = rest.rpartition("@")
        user, _, password = creds.partition(":")
        if at:
            servers.append(RTCIceServer(f"{scheme}:{host}", user or None, password or None))
        else:
            servers.append(RTCIceServer(url))
    return RTCConfiguration(iceServers=servers)


async def handle(request: web.Request) -> web.Response:
    """Offer in, answer out; the session then lives on in `Peers`."""
    services, peers = request.app[SERVICES], request.app[PEERS]
    settings = services.settings
    admission = Admission(services, TRANSPORT)
    try:
        if peers.closed:
            raise admission.refuse(DRAINING)
        admission.check_gateway()
        try:
            offer = parse_offer(await _body(request), settings.default_model)
            mode = settings.webrtc_peer_addresses
            offer.sdp = candidates.restrict(offer.sdp, request.remote, mode)
        except BadOffer as e:
            raise admission.refuse(bad_offer(str(e))) from None
        route = admission.check_model(offer.model)
        if peers.closed:  # it closed while the body came
            raise admission.refuse(DRAINING)
        admission.check_gateway()
        admission.take_stream_slot(request.remote)
        admission.hold(auth.keep_stream_slot(request))
        try:
            session = peers.open(services, route, offer, request.remote)
        except UnknownModel as e:  # the model went away since the check
            raise admission.refuse(unknown_model(e)) from None
    except NotAdmitted as e:
        admission.release()
        return refusal_response(e.refusal)
    session.admission = admission
    try:
        answer = await session.negotiate()
    except Exception as e:  # aiortc raises many kinds for an offer it cannot use
        await session.close()
        if services.draining:
            return refusal_response(admission.counted(DRAINING))
        log.info("session=%s offer refused: %r", session.id, e)
        return refusal_response(admission.counted(bad_offer(str(e))))
    if session.closing:  # drained while negotiating
        return refusal_response(admission.counted(DRAINING))
    peers.start(session)
    reply: dict[str, Any] = {"sdp": answer.sdp, "type": answer.type, "session": session.id}
    reply["model"] = services.repo.resolve(route).ref  # as hello will say; the dashboard shows it
    if offer.annotate:
        reply["annotate"] = session.annotated is not None
    return web.json_response(reply)


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        raise BadOffer(f"an offer is at most {MAX_OFFER_BYTES} bytes")
    body = await read_body(request, request.app[SERVICES].settings.request_timeout_s)
    if len(body) > MAX_OFFER_BYTES:
        raise BadOffer(f"an offer is at most {MAX_OFFER_BYTES} bytes")
    return body


def parse_offer(body: bytes, default_model: str) -> Offer:
    """The offer request, checked; BadOffer says what is wrong with it."""
    obj = codec.json_object(body, 'the body ({"sdp": "...", "type": "offer"})', BadOffer)
    unknown = set(obj) - _OFFER_KEYS
    if unknown:
        raise BadOffer(f"unknown keys {sorted(unknown)}; known: {sorted(_OFFER_KEYS)}")
    if obj.get("type") != "offer":
        raise BadOffer('"type" must be "offer"')
    sdp, model, annotate = obj.get("sdp"), obj.get("model", default_model), obj.get("annotate")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadOffer('"sdp" must be the offer\'s SDP text')
    if not isinstance(model, str) or not 0 < len(model) <= 128:
        raise BadOffer('"model" must be a model name, or name@version')
    if annotate is not None and not isinstance(annotate, bool):
        raise BadOffer('"annotate" must be true or false')
    try:
        parsed = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as e:  # the parser raises whatever the text makes it trip on
        raise BadOffer(f"the SDP is not readable: {e!r}") from None
    video = {
        m.rtp.muxId: m.direction or "sendrecv"
        for m in parsed.media
        if m.kind == "video" and m.direction in (None, "sendrecv", "sendonly")
    }
    if not video:
        raise BadOffer("the offer sends no video: add the camera as a video track")
    return Offer(sdp=sdp, model=model, annotate=bool(annotate), video=video)


def bad_offer(message: str) -> Refusal:
    return Refusal("bad_offer", message, Kind.INVALID)
