"""Who may call the gRPC services: the same tokens as HTTP's /v1/ (edge.access.auth,
edge.access.tokens), in
`authorization: Bearer <token>` metadata, checked once for every call before its handler runs.

The health service and server reflection stay open, as /healthz and /readyz do on HTTP: they
hold no data. A call without a good token ends with UNAUTHENTICATED and its handler never runs.
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
        self._metrics = app[SERVICES].metrics

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not self._auth.enabled or details.method.startswith(OPEN_PREFIXES):
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
