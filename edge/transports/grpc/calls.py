"""A gRPC call's way in: refused with the WebSocket's reasons (as gRPC codes) while the gateway
is not ready, draining or busy, or over a stream limit; else admitted with its slots and its
client's frame budget, and served (a stream by edge.transports.grpc.streaming)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from aiohttp import web

from edge.access.auth import GUARD, take_stream_slot
from edge.access.ratelimit import CLIENTS, Slot, client_of
from edge.access.tokens import Refused
from edge.core.services import SERVICES, Services
from edge.models.repository import UnknownModel
from edge.transports.grpc.guard import PRINCIPAL
from edge.transports.grpc.streaming import GrpcStreamSession, Translation

Code = grpc.StatusCode


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
    refused = refusal(services)
    if refused is not None:
        return await _refuse(services, context, transport, *refused)
    slot = services.streams.acquire("*")  # the whole gateway's, not this process's
    if slot is None:
        return await _refuse(
            services,
            context,
            transport,
            Code.UNAVAILABLE,
            "max_streams",
            f"the gateway serves at most {settings.max_streams} streams",
        )
    own: Slot | None = None
    session = GrpcStreamSession(services, context, translation, transport)
    try:
        principal = PRINCIPAL.get()
        if principal is not None:
            try:
                own = take_stream_slot(app[GUARD], principal)
            except Refused as e:
                services.metrics.auth_refused.labels(e.reason).inc()
                return await _refuse(
                    services, context, transport, Code.RESOURCE_EXHAUSTED, e.reason, e.message
                )
        first = await _first_request(context, settings.idle_timeout_s)
        if first is grpc.aio.EOF:
            return None  # a call that sent nothing is answered with nothing
        try:
            route = services.repo.route(translation.route(first, settings.default_model)).route
        except UnknownModel as e:
            return await _refuse(
                services, context, transport, Code.NOT_FOUND, "unknown_model", str(e)
            )
        with client_of(app[CLIENTS], peer_host(context.peer())):
            services.session_opened(session)
            try:
                await session.run(route, first)
            except UnknownModel as e:  # the model went away between the check and the run
                await context.abort(Code.NOT_FOUND, f"unknown_model: {e}")
    finally:
        services.session_closed(session)
        slot.release()
        if own is not None:
            own.release()
    return None


async def _first_request(context: grpc.aio.ServicerContext, idle: float) -> Any:
    try:
        return await asyncio.wait_for(context.read(), idle or None)
    except asyncio.TimeoutError:
        await context.abort(Code.DEADLINE_EXCEEDED, f"no request for {idle:g} s")


def refusal(services: Services) -> tuple[grpc.StatusCode, str, str] | None:
    """Why a new call would be refused now (draining, not ready, busy), or None."""
    if services.draining:
        return Code.UNAVAILABLE, "draining", "the gateway is shutting down; reconnect"
    if not services.repo.ready:
        return Code.UNAVAILABLE, "not_ready", "models are still loading"
    if services.saturated:
        return Code.UNAVAILABLE, "busy", "this gateway process is behind; retry"
    return None


async def _refuse(
    services: Services,
    context: grpc.aio.ServicerContext,
    transport: str,
    code: grpc.StatusCode,
    reason: str,
    message: str,
) -> None:
    services.metrics.streams_refused.labels(transport, reason).inc()
    await context.abort(code, f"{reason}: {message}")


def peer_host(peer: str) -> str:
    """The client's address from gRPC's peer string (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`),
    written as aiohttp's `request.remote`, so one client is one client on every transport."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer
