"""Limits on what one client may ask of the gateway: frames per second and streams per token.

Frame rates are token buckets, one per stream and one per client address. `take_frame` asks
`allow_frame` for each frame; a frame over either rate is answered `rate_limited` and costs no
further work. A stream finds its client's bucket through the request that opened it: the
middleware below puts the bucket into the request's context, and every task the handler starts
(the WebSocket reader, aiortc's tasks for a WebRTC session) inherits that context. So a
transport gets both limits without doing anything, and a stream opened outside a request (a
unit test) has its per-stream limit only.

A client's bucket lives while a request or a stream of that client holds it; the table of
buckets is weak, so it holds one entry per connected address and no more.

Streams per token are counted by `StreamQuota`; the auth middleware (edge.auth) takes a slot
for each stream-opening request and gives it back when the stream ends.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from edge.settings import Settings
from edge.stream import Stream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per frame."""

    __slots__ = ("__weakref__", "_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float | None = None, now: float | None = None) -> None:
        self._rate = rate
        self._burst = max(1.0, rate if burst is None else burst)
        self._tokens = self._burst
        self._at = time.monotonic() if now is None else now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False means the caller is over the rate."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FrameLimits:
    """The per-client buckets of one app, by client address."""

    def __init__(self, settings: Settings) -> None:
        self.per_stream = settings.max_fps_per_stream
        self.per_client = settings.max_fps_per_client
        self._clients: weakref.WeakValueDictionary[str, TokenBucket] = weakref.WeakValueDictionary()

    def client_bucket(self, address: str) -> TokenBucket | None:
        if self.per_client <= 0:
            return None
        bucket = self._clients.get(address)
        if bucket is None:
            bucket = self._clients[address] = TokenBucket(self.per_client)
        return bucket


@dataclass(eq=False)
class _StreamBuckets:
    stream: TokenBucket | None
    client: TokenBucket | None


#: the client bucket of the request being handled (set by `middleware`)
_CLIENT: contextvars.ContextVar[TokenBucket | None] = contextvars.ContextVar(
    "edge_client_bucket", default=None
)
#: each stream's buckets, for as long as the stream object lives
_BY_STREAM: weakref.WeakKeyDictionary[Stream, _StreamBuckets] = weakref.WeakKeyDictionary()


def allow_frame(settings: Settings, stream: Stream, now: float) -> str | None:
    """None if the frame may go on, else the limit it broke: "stream" or "client"."""
    buckets = _BY_STREAM.get(stream)
    if buckets is None:
        rate = settings.max_fps_per_stream
        own = TokenBucket(rate, now=now) if rate > 0 else None
        buckets = _BY_STREAM[stream] = _StreamBuckets(own, _CLIENT.get())
    # Nested: only frames within their stream's rate count against the client's, so a stream
    # that floods spends its own budget and not its sibling streams'.
    if buckets.stream is not None and not buckets.stream.take(now):
        return "stream"
    if buckets.client is not None and not buckets.client.take(now):
        return "client"
    return None


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
    """Open streams per identity (a token's fingerprint or a JWT subject); 0: no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, identity: str) -> Slot | None:
        """A slot, or None if `identity` holds `limit` slots already."""
        n = self._open.get(identity, 0)
        if self.limit > 0 and n >= self.limit:
            return None
        self._open[identity] = n + 1
        return Slot(self, identity)

    def open(self, identity: str) -> int:
        return self._open.get(identity, 0)

    def _release(self, identity: str) -> None:
        left = self._open[identity] - 1
        if left:
            self._open[identity] = left
        else:
            del self._open[identity]


LIMITS = web.AppKey("limits", FrameLimits)


def setup(app: web.Application, settings: Settings) -> None:
    """Install the per-app limits and the middleware that binds requests to their client."""
    app[LIMITS] = FrameLimits(settings)
    app.middlewares.append(middleware)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    bucket = request.app[LIMITS].client_bucket(request.remote or "unknown")
    token = _CLIENT.set(bucket)
    try:
        return await handler(request)
    finally:
        _CLIENT.reset(token)
