"""Who may call the gRPC services: the same tokens as HTTP's /v1/ (edge.access.auth,
edge.access.tokens), in
`authorization: Bearer <token>` metadata, checked once for every call before its handler runs.

The health service and server reflection stay open, as /healthz and /readyz do on HTTP: they
hold no data. A call without a good token ends with UNAUTHENTICATED and its handler never runs.

grpcio reads a unary request whole, up to the server's one receive limit (the largest any
method takes), before a handler runs. So the open methods are served as request-streaming
handlers that take a slot before reading anything: at most `max_pending_auth` open calls in the
gateway and `max_pending_auth_per_client` per client address (the bounds of token-less
WebSockets, in a pool of their own); past them a call ends with RESOURCE_EXHAUSTED, its
request never read. Without a token no one holds more than those calls' requests in memory.
The principal a call was let in as is in `PRINCIPAL` for its handler (the interceptor and the
handler run in the call's one task), so a stream can take a slot of its token's quota.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from edge.access.auth import GUARD
from edge.access.ratelimit import Slot, StreamQuota
from edge.access.tokens import Principal, Refused, unauthorized
from edge.core.services import SERVICES

log = logging.getLogger("edge.grpc")

#: methods anyone may call
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_MISSING = "a token is required: send the metadata authorization: Bearer <token>"

#: the principal of the call being handled; None while authentication is off
PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "edge_grpc_principal", default=None
)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, app: web.Application) -> None:
        self._auth = app[GUARD].auth
        services = app[SERVICES]
        self._metrics = services.metrics
        settings, shared = services.settings, services.cluster.shared
        self._open = (
            StreamQuota(settings.max_pending_auth, shared, "open-calls"),
            StreamQuota(settings.max_pending_auth_per_client, shared, "open-calls-of"),
        )

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        if details.method.startswith(OPEN_PREFIXES):
            return bounded(handler, self._open)
        if not self._auth.enabled:
            return handler
        try:
            PRINCIPAL.set(self._auth.verify(bearer_token(details.invocation_metadata), "metadata"))
        except Refused as e:
            self._metrics.auth_refused.labels(e.reason).inc()
            log.info("refused a gRPC call to %s: %s", details.method, e.reason)
            return aborting(handler, grpc.StatusCode.UNAUTHENTICATED, e.message)
        return handler


def bearer_token(metadata: Any) -> str:
    """The token of an `authorization: Bearer <token>` entry, or raise Refused."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized(
                    "invalid_token", "use the metadata authorization: Bearer <token>"
                )
            return token.strip()
    raise unauthorized("missing_token", _MISSING)


def aborting(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler that ends the call with `code` and reads nothing of the request, whatever
    kind `handler` is: grpcio reads a unary call's whole message before its handler runs,
    a request-streaming handler reads only what it asks for, so the refusal is a streaming
    one (the client sees the status either way, and its message is never taken in)."""

    async def abort(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    return grpc.stream_unary_rpc_method_handler(abort)


def peer_host(peer: str) -> str:
    """The client's address from gRPC's peer string (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`),
    written as aiohttp's `request.remote`, so one client is one client on every transport."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def bounded(handler: grpc.RpcMethodHandler, quotas: tuple[StreamQuota, StreamQuota]) -> Any:
    """`handler` as a request-streaming handler that holds a slot of the gateway's (`quotas[0]`)
    and of the client address's (`quotas[1]`) while it runs, taken before its request is read;
    without one, RESOURCE_EXHAUSTED and nothing read."""
    gateway, per_client = quotas
    unary_request = not handler.request_streaming

    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        slots: list[Slot] = []
        for quota, identity in ((gateway, "*"), (per_client, peer_host(context.peer()))):
            slot = quota.acquire(identity)
            if slot is None:
                for s in slots:
                    s.release()
                log.info("refused an open gRPC call from %s: too many", context.peer())
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many health or reflection calls at once; retry",
                )
            else:
                slots.append(slot)
        try:
            if unary_request:
                request = await context.read()
                if request is grpc.aio.EOF:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request")
                behaviour = handler.unary_unary or handler.unary_stream
            else:
                request, behaviour = requests, handler.stream_unary or handler.stream_stream
            outcome = behaviour(request, context)
            if not handler.response_streaming:
                return await outcome
            if hasattr(outcome, "__aiter__"):  # a generator of responses: written here
                async for response in outcome:
                    await context.write(response)
            else:  # it writes its responses itself
                await outcome
            return None
        finally:
            for s in slots:
                s.release()

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(call, **kw)
    return grpc.stream_unary_rpc_method_handler(call, **kw)
