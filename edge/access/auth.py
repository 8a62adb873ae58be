"""Who may use /v1/: browser origins, bearer tokens, streams per token (docs/security.md).

One middleware guards every request under /v1/ (streams, WebRTC offers, the model API) and
KServe v2's /v2 (but its health probes), so a transport needs no code of its own to be
protected. Nothing else is checked: the probes (/healthz, /readyz, /v2/health/*), Prometheus
(/metrics) and the dashboard's static files hold no data.

Order of the checks: a browser's `Origin` first (403), then the token (401), then the number of
streams the token holds (429). Authentication is on as soon as a token, a token file or a JWT
key is configured. A WebSocket upgrade that carries no token but offers the `edge.v1`
subprotocol is let through pending: the handler must then call `accept_message` on the first
message (edge.transports.websocket). Any other request without a token gets 401.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web
from yarl import URL

from edge.access.ratelimit import Slot, StreamQuota
from edge.access.tokens import Authenticator, Principal, Refused, unauthorized
from edge.metrics import Metrics
from edge.settings import Settings
from edge.sharedmem import Shared

log = logging.getLogger("edge.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: the subprotocol a WebSocket client offers; a token may ride along as `bearer.<token>`
SUBPROTOCOL = "edge.v1"
BEARER_PROTOCOL = "bearer."
#: requests that open a stream, and so take a slot of the token's stream quota
STREAM_ROUTES = {("GET", "/v1/stream"), ("POST", "/v1/webrtc/offer")}
_MISSING = (
    "a token is required: an Authorization: Bearer header, a bearer.<token> WebSocket "
    "subprotocol, ?token=, or (WebSocket) the subprotocol edge.v1 and an auth message first"
)


# -- origins -----------------------------------------------------------------------------------
Origin = tuple[str, str, int | None]


def parse_origin(text: str) -> Origin | None:
    """(scheme, host, port) of an origin or a base URL, default ports made explicit."""
    try:
        url = URL(text)
    except (ValueError, TypeError):
        return None
    if not url.absolute or not url.host or url.path not in ("", "/") or url.user is not None:
        return None
    if url.query_string or url.fragment:
        return None
    return url.scheme.lower(), url.host.lower(), url.port


def own_origin(request: web.Request) -> Origin | None:
    """The origin this request reached us at: its scheme and its Host header."""
    return parse_origin(f"{request.scheme}://{request.host}")


# -- per-app state and the middleware ----------------------------------------------------------
@dataclass
class Guard:
    auth: Authenticator
    origins: frozenset[Origin]
    quota: StreamQuota
    #: WebSockets upgraded without a token and not yet authenticated: at most
    #: max_pending_auth in the gateway ("*") and max_pending_auth_per_client per address
    unauthenticated: StreamQuota
    unauthenticated_per_client: StreamQuota
    metrics: Metrics


@dataclass
class RequestAuth:
    """What the middleware learnt about one request, for the handler."""

    principal: Principal | None = None
    #: the stream-quota slot this request holds; released when the handler returns unless a
    #: transport took it over (`keep_stream_slot`)
    slot: Slot | None = None
    #: the pending-auth slots (gateway, address) of a token-less WebSocket until its auth
    pending: tuple[Slot, ...] = ()


GUARD = web.AppKey("guard", Guard)
REQUEST_AUTH = web.RequestKey("edge_auth", RequestAuth)


def setup(app: web.Application, settings: Settings, shared: Shared, metrics: Metrics) -> None:
    """Install the guard; refuses to start with a bad token file or JWT key (SettingsError).
    The quotas count across every serving process (`shared`)."""
    origins = frozenset(o for o in map(parse_origin, settings.allowed_origins) if o)
    auth = Authenticator(settings)
    app[GUARD] = Guard(
        auth,
        origins,
        StreamQuota(settings.max_streams_per_token, shared, "token"),
        StreamQuota(settings.max_pending_auth, shared, "pending"),
        StreamQuota(settings.max_pending_auth_per_client, shared, "pending-of"),
        metrics,
    )
    app.middlewares.append(middleware)
    if not auth.enabled and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "authentication is off: anyone who can reach %s:%d may use /v1/; set "
            "EDGE_AUTH_TOKENS, EDGE_AUTH_TOKENS_FILE, EDGE_JWT_SECRET or EDGE_JWT_PUBLIC_KEY",
            settings.host,
            settings.port,
        )


def guarded(path: str) -> bool:
    """Paths the guard checks: the gateway's API (/v1/) and KServe v2's (/v2, but for its
    health probes)."""
    if path.startswith("/v1/"):
        return True
    return (path == "/v2" or path.startswith("/v2/")) and not path.startswith("/v2/health/")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not guarded(request.path):
        return await handler(request)
    guard = request.app[GUARD]
    state = request[REQUEST_AUTH] = RequestAuth()
    try:
        _check_origin(guard, request)
        if guard.auth.enabled:
            token, via = bearer_token(request)
            if token is not None:
                state.principal = guard.auth.verify(token, via)
            elif _is_upgrade(request) and SUBPROTOCOL in offered_subprotocols(request):
                state.pending = _take_pending(guard, request.remote or "unknown")
            else:
                raise unauthorized("missing_token", _MISSING)
        if state.principal is not None and (request.method, request.path) in STREAM_ROUTES:
            state.slot = take_stream_slot(guard, state.principal)
    except Refused as e:
        return _refuse(request, e)
    try:
        return await handler(request)
    finally:
        for slot in (state.slot, *state.pending):
            if slot is not None:
                slot.release()


def _take_pending(guard: Guard, remote: str) -> tuple[Slot, ...]:
    """The slots a token-less WebSocket holds while it logs in (no stream slot: those are
    taken once it is authenticated), or raise Refused (503)."""
    mine = guard.unauthenticated_per_client.acquire(remote)
    if mine is None:
        raise Refused(503, "busy", "busy", "this address has too many connections logging in")
    everyone = guard.unauthenticated.acquire("*")
    if everyone is None:
        mine.release()
        raise Refused(503, "busy", "busy", "too many connections waiting to log in")
    return mine, everyone


def _check_origin(guard: Guard, request: web.Request) -> None:
    """A browser sends Origin; a page from a site not allowed must not use our streams with the
    user's ambient credentials or on the user's network (cross-site WebSocket hijacking)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return  # not a browser: devices, curl, servers
    parsed = parse_origin(origin)
    if parsed is not None and (parsed in guard.origins or parsed == own_origin(request)):
        return
    raise Refused(
        403,
        "forbidden_origin",
        "forbidden_origin",
        "pages from this origin may not use the gateway; add it to EDGE_ALLOWED_ORIGINS",
    )


def bearer_token(request: web.Request) -> tuple[str | None, str]:
    """The token a request carries, and how: the Authorization header, a `bearer.<token>`
    WebSocket subprotocol (browsers cannot set headers on a WebSocket) or `?token=`."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("invalid_token", "use Authorization: Bearer <token>")
        return value.strip(), "header"
    for proto in offered_subprotocols(request):
        if proto.startswith(BEARER_PROTOCOL):
            return proto[len(BEARER_PROTOCOL) :], "subprotocol"
    token = request.query.get("token")
    if token is not None:
        return token, "query"
    return None, ""


def offered_subprotocols(request: web.Request) -> list[str]:
    raw = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _is_upgrade(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.path == "/v1/stream"
        and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    )


def take_stream_slot(guard: Guard, principal: Principal) -> Slot:
    """A slot of the principal's stream quota, or raise Refused (429)."""
    slot = guard.quota.acquire(principal.identity)
    if slot is None:
        raise Refused(
            429,
            "too_many_streams",
            "too_many_streams",
            f"this token holds {guard.quota.limit} streams already; close one first",
        )
    return slot


def _refuse(request: web.Request, e: Refused) -> web.Response:
    request.app[GUARD].metrics.auth_refused.labels(e.reason).inc()
    log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, e.reason)
    headers = {}
    if e.status == 401:
        error = ', error="invalid_token"' if e.reason != "missing_token" else ""
        headers[hdrs.WWW_AUTHENTICATE] = f'Bearer realm="edge"{error}'
    elif e.status in (429, 503):
        headers[hdrs.RETRY_AFTER] = "1"
    body = {"error": e.code, "message": e.message}
    return web.json_response(body, status=e.status, headers=headers)


# -- for transports ----------------------------------------------------------------------------
def pending(request: web.Request) -> bool:
    """True for a WebSocket let in without a token: its first message must be `auth`."""
    state = request.get(REQUEST_AUTH)
    return state is not None and bool(state.pending) and state.principal is None


def auth_message_token(text: str) -> str | None:
    """The token of an `{"type":"auth","token":"..."}` message, None for any other text."""
    if '"auth"' not in text:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "auth":
        return None
    token = obj.get("token")
    return token if isinstance(token, str) else ""


def accept_message(request: web.Request, text: str) -> Principal:
    """Authenticate a pending WebSocket by its first message, or raise Refused."""
    guard, state = request.app[GUARD], request[REQUEST_AUTH]
    token = auth_message_token(text)
    try:
        if not token:
            raise unauthorized(
                "missing_token", 'the first message must be {"type":"auth","token":"..."}'
            )
        principal = guard.auth.verify(token, "message")
        state.slot = take_stream_slot(guard, principal)
    except Refused as e:
        request.app[GUARD].metrics.auth_refused.labels(e.reason).inc()
        log.info("refused an auth message from %s: %s", request.remote, e.reason)
        raise
    state.principal = principal
    for slot in state.pending:
        slot.release()
    return principal


def refuse_pending(request: web.Request, reason: str) -> None:
    """Count a pending WebSocket that sent no auth message in time (`accept_message` counts
    the other refusals itself)."""
    request.app[GUARD].metrics.auth_refused.labels(reason).inc()
    log.info("refused a WebSocket from %s: %s", request.remote, reason)


def keep_stream_slot(request: web.Request) -> Slot | None:
    """For a transport whose stream outlives its request (a WebRTC session): take over the
    request's stream-quota slot and release it when the stream ends."""
    state = request.get(REQUEST_AUTH)
    if state is None:
        return None
    slot, state.slot = state.slot, None
    return slot
