"""Limits on what one client may ask of the gateway: frames per second and streams per token.

Frame rates are token buckets. `take_frame` (edge.core.streams) asks `allow_frame` for each
frame of a stream; a frame over a rate is answered `rate_limited` and costs no further work.
The buckets belong to whatever object owns the frames (a stream; this module knows nothing of
streams), held weakly. Three buckets, nested:

- the stream's own, `max_fps_per_stream`;
- the stream's fair share of its client's budget: `max_fps_per_client` divided by the streams
  that client address has open in the whole gateway (re-read twice a second), so 16 streams
  of one camera box each get a sixteenth instead of racing for one bucket;
- the client's bucket itself, shared by every serving process (edge.sharedmem), which keeps the
  whole gateway within `max_fps_per_client`. A unary request on any transport takes one token
  of it up front (`request`, through edge.core.admission.admit_request) and holds the
  client's row while it runs.

A stream finds its client through the request that opened it: the middleware below puts the
client into the request's context, and every task the handler starts (the WebSocket reader,
aiortc's tasks for a WebRTC session) inherits that context. So a transport gets the limits
without doing anything but `forget` at the end, and a stream opened outside a request (a unit
test) has its per-stream limit only.

Streams per token, and streams in the whole gateway, are counted by `StreamQuota` over the
same shared table; the auth middleware (edge.access.auth) takes a slot for each stream-opening
request
and gives it back when the stream ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from edge.settings import Settings
from edge.sharedmem import Shared

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: how often a stream re-reads how many streams its client has open
SHARE_REFRESH_S = 0.5


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per frame."""

    __slots__ = ("__weakref__", "_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float | None = None, now: float | None = None) -> None:
        self._rate = rate
        self._burst = max(1.0, rate if burst is None else burst)
        self._tokens = self._burst
        self._at = time.monotonic() if now is None else now

    def set_rate(self, rate: float) -> None:
        """A new rate, with one second's worth of burst; tokens saved up beyond it go."""
        self._rate = rate
        self._burst = max(1.0, rate)
        self._tokens = min(self._tokens, self._burst)

    def take(self, now: float) -> bool:
        """Take one token if there is one; False means the caller is over the rate."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class Client:
    """Who sent the request a stream was opened by, and the limits that apply to it."""

    key: str
    rate: float
    shared: Shared


class _ClientShare:
    """A stream's hold on its client: a counted slot and its fair-share bucket."""

    def __init__(self, client: Client, now: float) -> None:
        self.client = client
        self.held = client.shared.acquire(client.key, 0, keep_free=client_room(client.shared))
        self.bucket = TokenBucket(client.rate, now=now)
        self.refresh_at = now

    def take(self, now: float) -> bool:
        c = self.client
        if now >= self.refresh_at:
            self.refresh_at = now + SHARE_REFRESH_S
            self.bucket.set_rate(c.rate / max(1, c.shared.count(c.key)))
        if not self.bucket.take(now):
            return False
        return c.shared.take_token(c.key, c.rate, now) is not False

    def release(self) -> None:
        if self.held:
            self.held = False
            self.client.shared.release(self.client.key)


@dataclass(eq=False)
class _Buckets:
    own: TokenBucket | None
    client: _ClientShare | None


#: the client of the request being handled (set by `middleware`)
_CLIENT: contextvars.ContextVar[Client | None] = contextvars.ContextVar("edge_client", default=None)
#: each owner's buckets (a stream's), for as long as the owner lives
_BY_OWNER: weakref.WeakKeyDictionary[object, _Buckets] = weakref.WeakKeyDictionary()


def allow_frame(settings: Settings, owner: object, now: float) -> str | None:
    """None if a frame of `owner` (a stream, weakly referenced) may go on, else the limit it
    broke: "stream" or "client"."""
    buckets = _BY_OWNER.get(owner)
    if buckets is None:
        rate = settings.max_fps_per_stream
        own = TokenBucket(rate, now=now) if rate > 0 else None
        client = _CLIENT.get()
        share = _ClientShare(client, now) if client is not None else None
        buckets = _BY_OWNER[owner] = _Buckets(own, share)
        if share is not None:
            weakref.finalize(owner, share.release)  # a transport that forgot `forget`
    # Nested: only frames within their stream's rate count against the client's, so a stream
    # that floods spends its own budget and not its sibling streams'.
    if buckets.own is not None and not buckets.own.take(now):
        return "stream"
    if buckets.client is not None and not buckets.client.take(now):
        return "client"
    return None


def forget(owner: object) -> None:
    """The stream `owner` has ended: it no longer counts among its client's streams."""
    buckets = _BY_OWNER.pop(owner, None)
    if buckets is not None and buckets.client is not None:
        buckets.client.release()


class Slot:
    """One open stream counted against an identity; `release()` gives it back, once."""

    __slots__ = ("_identity", "_quota")

    def __init__(self, quota: StreamQuota, identity: str) -> None:
        self._quota: StreamQuota | None = quota
        self._identity = identity

    def release(self) -> None:
        if self._quota is not None:
            self._quota._release(self._identity)
            self._quota = None


class StreamQuota:
    """Open streams per identity (a token's fingerprint, a JWT subject, or "*" for the whole
    gateway), counted across every serving process; 0: no limit."""

    def __init__(self, limit: int, shared: Shared | None = None, kind: str = "quota") -> None:
        self.limit = limit
        self._shared = shared or Shared(1, 1024)
        self._kind = kind

    def acquire(self, identity: str) -> Slot | None:
        """A slot, or None if `identity` holds `limit` slots already."""
        if not self._shared.acquire(f"{self._kind}:{identity}", self.limit):
            return None
        return Slot(self, identity)

    def open(self, identity: str) -> int:
        return self._shared.count(f"{self._kind}:{identity}")

    def _release(self, identity: str) -> None:
        self._shared.release(f"{self._kind}:{identity}")


@dataclass(frozen=True)
class ClientLimits:
    rate: float
    shared: Shared


CLIENTS = web.AppKey("client_limits", ClientLimits)


def setup(app: web.Application, settings: Settings, shared: Shared) -> None:
    """Install the middleware that binds requests to their client's limits."""
    app[CLIENTS] = ClientLimits(settings.max_fps_per_client, shared)
    app.middlewares.append(middleware)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    with client_of(request.app[CLIENTS], request.remote):
        return await handler(request)


@contextlib.contextmanager
def client_of(limits: ClientLimits, remote: str | None) -> Iterator[None]:
    """Within it, streams opened and frames taken count against the client at address
    `remote` (the same key whatever the transport: a client's WebSocket and gRPC streams
    share one budget)."""
    if limits.rate <= 0:
        yield
        return
    token = _CLIENT.set(Client(client_key(remote), limits.rate, limits.shared))
    try:
        yield
    finally:
        _CLIENT.reset(token)


def client_key(remote: str | None) -> str:
    return f"client:{remote or 'unknown'}"


def client_room(shared: Shared) -> int:
    """Rows of the shared table a new client row must leave free: a quarter of it (at least
    max_streams + 256, edge.sharedmem.capacity_for), for the gateway's and tokens' stream
    counts, so clients from many addresses never crowd out the rows streams need."""
    return shared.capacity // 4


class ClientRequest:
    """One unary request's hold on its client (`request`): the client's row is counted while
    the request runs, so its bucket is shared with its other requests and streams; within the
    `with` block the request's one frame is not counted against the client a second time."""

    def __init__(self, shared: Shared, key: str, held: bool) -> None:
        self._shared, self._key, self._held = shared, key, held
        self._bound: contextvars.Token[Client | None] | None = None

    def __enter__(self) -> ClientRequest:
        self._bound = _CLIENT.set(None)
        return self

    def __exit__(self, *_: object) -> None:
        if self._bound is not None:
            _CLIENT.reset(self._bound)
            self._bound = None
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._shared.release(self._key)


def request(shared: Shared, rate: float, remote: str | None, now: float) -> ClientRequest | None:
    """A unary request of the client at `remote` against its budget (`rate` a second, shared
    with its streams' frames, across every process): its hold, or None when over the budget
    (or when the table has no room for one more client)."""
    key = client_key(remote)
    if rate <= 0:
        return ClientRequest(shared, key, held=False)
    if not shared.acquire(key, 0, keep_free=client_room(shared)):
        return None
    hold = ClientRequest(shared, key, held=True)
    if shared.take_token(key, rate, now) is False:
        hold.release()
        return None
    return hold
