"""A gRPC call's way in, through the gateway's one admission (edge.core.admission): refused with
the WebSocket's reasons, as gRPC codes, while the gateway is not ready, draining or busy, or
over a stream limit; else admitted with its slots and its client's frame budget, and served (a
stream by edge.transports.grpc.streaming)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from aiohttp import web

from edge.access.auth import GUARD
from edge.access.ratelimit import CLIENTS, client_of
from edge.core.admission import Admission, Kind, NotAdmitted, Refusal
from edge.core.services import SERVICES
from edge.models.repository import UnknownModel
from edge.settings import Settings
from edge.transports.grpc.guard import PRINCIPAL, peer_host
from edge.transports.grpc.streaming import GrpcStreamSession, Translation

Code = grpc.StatusCode
#: the largest request of a call that carries no image or tensor (metadata, readiness)
SMALL_CALL_BYTES = 64 * 1024
#: a refusal's kind as a gRPC status code
GRPC_CODE = {
    Kind.UNAVAILABLE: Code.UNAVAILABLE,
    Kind.NOT_FOUND: Code.NOT_FOUND,
    Kind.EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    Kind.INVALID: Code.INVALID_ARGUMENT,
}

#: the gateway's error codes (a frame's, docs/protocol.md) and KServe's error kinds as gRPC
#: status codes; any other is INTERNAL
STATUS = {
    "bad_frame": Code.INVALID_ARGUMENT,
    "bad_message": Code.INVALID_ARGUMENT,
    "invalid": Code.INVALID_ARGUMENT,
    "unknown_model": Code.NOT_FOUND,
    "not_found": Code.NOT_FOUND,
    "model_unavailable": Code.UNAVAILABLE,
    "unavailable": Code.UNAVAILABLE,
    "too_large": Code.RESOURCE_EXHAUSTED,
    "rate_limited": Code.RESOURCE_EXHAUSTED,
}


def status(code: str) -> grpc.StatusCode:
    """The gRPC status for an error code or a KServe error kind (STATUS)."""
    return STATUS.get(code, Code.INTERNAL)


async def abort(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    """End the call with `refusal` (edge.core.admission): its code, details `reason: message`."""
    await context.abort(GRPC_CODE[refusal.kind], f"{refusal.reason}: {refusal.message}")


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
    with Admission(services, transport) as admission:
        try:
            admission.check_gateway()
            admission.take_stream_slot(peer_host(context.peer()))
            principal = PRINCIPAL.get()
            if principal is not None:
                admission.take_token_slot(app[GUARD], principal)
            first = await _first_request(context, settings.idle_timeout_s)
            if first is grpc.aio.EOF:
                return None  # a call that sent nothing is answered with nothing
            route = admission.check_model(translation.route(first, settings.default_model))
        except NotAdmitted as e:
            await abort(context, e.refusal)
        session = GrpcStreamSession(services, context, translation, transport, first)
        client = peer_host(context.peer())
        with client_of(app[CLIENTS], client):
            try:
                session.open(route, client)
            except UnknownModel as e:  # the model went away between the check and the run
                await context.abort(Code.NOT_FOUND, f"unknown_model: {e}")
            await session.run()
    return None


async def _first_request(context: grpc.aio.ServicerContext, idle: float) -> Any:
    try:
        return await asyncio.wait_for(context.read(), idle or None)
    except asyncio.TimeoutError:
        await context.abort(Code.DEADLINE_EXCEEDED, f"no request for {idle:g} s")


def frame_limit(settings: Settings) -> int:
    """The largest request of a call that carries one encoded image (Predict): past 4 x
    max_frame_bytes a call ends RESOURCE_EXHAUSTED, below it an image over max_frame_bytes
    is answered bad_frame as on the WebSocket."""
    return 4 * settings.max_frame_bytes


def tensor_limit(settings: Settings) -> int:
    """The largest request of a call that carries tensors (ModelInfer, ModelStreamInfer): a
    raw tensor of up to max_infer_bytes, and never less than an image call takes. The
    server's own receive limit, the largest any method takes."""
    return max(frame_limit(settings), settings.max_infer_bytes)
