"""The gRPC server: grpcio's asyncio server on `grpc_port`, on the app's event loop, owned by
the app like its other services (`grpc_server` is a cleanup_ctx).

What it serves: the services in `registrations()` (each a function that adds its servicer
and names its service), the standard health service (grpc.health.v1.Health, SERVING while the
gateway is ready, NOT_SERVING while loading or draining) and server reflection, answered from
the gateway's own descriptor pool (edge.transports.grpc.gen.POOL). Every call except health and
reflection needs a token when authentication is on (edge.transports.grpc.guard); TLS is on when the
gateway has a certificate.

With several serving processes each one binds the gRPC port with SO_REUSEPORT and the
kernel spreads connections among them; alone, the process binds it exclusively, so a port
already taken is an error at start-up, not a silent share (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from edge.core.services import SERVICES, Services
from edge.settings import Settings
from edge.transports.grpc import calls, guard
from edge.transports.grpc.gen import POOL

log = logging.getLogger("edge.grpc")

#: adds one service to the server and returns its full name (`package.Service`)
Registration = Callable[[grpc.aio.Server, web.Application], str]
#: how often the health status is brought in line with readiness
HEALTH_EVERY_S = 0.2
#: calls one serving process runs at once beyond its streams (unary calls, health, reflection)
EXTRA_CALLS = 256
#: how long calls still running when the server stops get to finish (streams were drained)
STOP_GRACE_S = 1.0


def registrations() -> list[Registration]:
    """The services the gRPC server serves; a new one adds its `register` here."""
    from edge.transports.grpc import inference, kserve

    return [inference.register, kserve.register]


class BindError(OSError):
    """The gRPC port cannot be bound."""


class GrpcServer:
    """One serving process's gRPC server: started, kept in line with readiness, stopped."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.services: Services = app[SERVICES]
        self.port = 0  # the port bound, once started
        self.names: list[str] = []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.services.settings
        server = grpc.aio.server(
            interceptors=[guard.TokenInterceptor(self.app)],
            options=options(settings, shared_port=self.services.cluster.size > 1),
            maximum_concurrent_rpcs=settings.max_streams + EXTRA_CALLS,
        )
        self.names = [register(server, self.app) for register in registrations()]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        everything = [*self.names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(everything, server, pool=POOL)
        address = _address(settings.host, settings.grpc_port)
        try:
            creds = credentials(settings)
            if creds is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, creds)
        except RuntimeError as e:  # grpcio's way of saying the bind failed
            raise BindError(f"cannot listen for gRPC on {address}: {e}") from None
        if not self.port:
            raise BindError(f"cannot listen for gRPC on {address}")
        await self._set_health(False)
        await server.start()
        self._server = server
        self._watcher = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        log.info("gRPC serving %s on %s", ", ".join(self.names), _address(settings.host, self.port))

    async def stop(self) -> None:
        """Health NOT_SERVING, then stop; calls still running get STOP_GRACE_S."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(STOP_GRACE_S)

    async def _follow_readiness(self) -> None:
        ready: bool | None = None
        while True:
            now = not self.services.not_ready()
            if now != ready:
                await self._set_health(now)
                ready = now
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _set_health(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.names):
            await self._health.set(name, status)


GRPC_SERVER = web.AppKey("grpc_server", GrpcServer)


async def grpc_server(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the gRPC server runs from start-up to cleanup (after the drain told its
    streams goaway)."""
    server = app[GRPC_SERVER] = GrpcServer(app)
    await server.start()
    try:
        yield
    finally:
        await server.stop()


def options(settings: Settings, shared_port: bool) -> list[tuple[str, int]]:
    """Channel arguments: message sizes bounded like the WebSocket's (a request over the
    largest any method takes, KServe's raw tensors, ends its call with RESOURCE_EXHAUSTED;
    each method holds its requests to its own, smaller limit where they are parsed),
    keepalive pings like its heartbeat, and the port shared among serving processes or not.

    grpcio has one receive limit per server, not per method, and reads a unary call's whole
    request before any handler runs; a call refused for its token reads nothing
    (guard.aborting)."""
    receive = calls.tensor_limit(settings)
    opts = [
        ("grpc.so_reuseport", 1 if shared_port else 0),
        ("grpc.max_receive_message_length", receive),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    if settings.heartbeat_s > 0:
        opts += [
            ("grpc.keepalive_time_ms", int(settings.heartbeat_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.heartbeat_s * 1000)),
        ]
    return opts


def credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS with the gateway's certificate, when it has one."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _own_pool_knows_the_standard_services() -> None:
    """Reflection answers from POOL alone, so it must hold health's and its own protos too."""
    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)


_own_pool_knows_the_standard_services()
