"""The application: builds the services at startup and tears them down in mirror order.

Startup: executor, metrics, result sinks (connecting in the background), repository (models
load in the background; /healthz answers at once, /readyz turns 200 when every model is warm),
scheduler workers, the model watcher, the gRPC server (edge.transports.grpc.server).
Shutdown (`drain`, then cleanup): refuse new streams and flip readiness, answer every frame
taken, send goaway and close streams as "going away", stop workers, release models, publish
what the sinks still hold (briefly) and close them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from edge import tracing
from edge.access import auth, ratelimit
from edge.access.ratelimit import StreamQuota
from edge.compat import timeout
from edge.core.scheduler import Scheduler
from edge.core.services import SERVICES, Services
from edge.metrics import Metrics
from edge.models.canary.canaries import Canaries
from edge.models.repository import Repository
from edge.process import loopmonitor as pulse
from edge.settings import Settings
from edge.sharedmem import Cluster
from edge.sinks.publisher import Publisher
from edge.tracing import FrameTracer
from edge.transports import http, kserve_rest, websocket

log = logging.getLogger("edge.app")


def create_app(
    settings: Settings, tracer: FrameTracer | None = None, cluster: Cluster | None = None
) -> web.Application:
    """The gateway app; `tracer` overrides the one the settings would set up (tests);
    `cluster` places it among several serving processes (edge.process.serving), else it is alone."""
    app = web.Application(client_max_size=settings.max_frame_bytes + 1024)
    cluster = cluster or Cluster.alone(settings.max_streams)
    metrics = Metrics(cluster.metrics_dir)
    repo = Repository(
        settings,
        Canaries(cluster, metrics, enabled=settings.canary),
        on_change=lambda: _publish_models(app),
        on_failure=lambda name, _version: metrics.model_load_failures.labels(name).inc(),
    )
    services = Services(
        settings=settings,
        metrics=metrics,
        repo=repo,
        scheduler=Scheduler(
            repo,
            metrics,
            workers=settings.worker_count,
            max_pixels=settings.max_pixels,
            max_png_pixels=settings.max_png_pixels,
            inflight_limit=settings.max_inflight,
            tracer=tracer or tracing.from_settings(settings.tracing),
        ),
        background=ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-background"),
        cluster=cluster,
        streams=StreamQuota(settings.max_streams, cluster.shared, "streams"),
        publisher=Publisher(settings, metrics, cluster.index),
        client_streams=StreamQuota(settings.max_streams_per_client, cluster.shared, "streams-of"),
    )
    app[SERVICES] = services
    auth.setup(app, settings, cluster.shared, metrics)  # origin, token and stream-quota checks
    ratelimit.setup(app, settings, cluster.shared)  # per-client frame-rate buckets
    app.add_routes(http.routes)
    app.add_routes(kserve_rest.routes)  # KServe v2 over REST (docs/protocols.md)
    app.router.add_get("/v1/stream", websocket.handle)
    _add_web(app, settings)
    app.cleanup_ctx.append(_metrics)  # first in, last out: after every frame is answered
    app.cleanup_ctx.append(_executor)
    app.cleanup_ctx.append(_sinks)  # stopped after the workers: the drain's results go out too
    app.cleanup_ctx.append(_workers)
    app.cleanup_ctx.append(_models)
    app.cleanup_ctx.append(pulse.pulse)
    if settings.grpc_port:  # after _workers: its calls end before the workers stop
        from edge.transports.grpc.server import grpc_server

        app.cleanup_ctx.append(grpc_server)
    _add_webrtc(app)  # after _models: its peer connections close before the workers stop
    app.on_shutdown.append(drain)
    return app


def _add_webrtc(app: web.Application) -> None:
    try:
        from edge.transports.webrtc import offer as webrtc
    except ImportError as e:  # the optional [webrtc] extra (aiortc) is not installed
        log.info("WebRTC ingest off: %s", e)
        return
    app.router.add_post("/v1/webrtc/offer", webrtc.handle)
    app.cleanup_ctx.append(webrtc.peer_connections)


def _add_web(app: web.Application, settings: Settings) -> None:
    root = settings.web_root
    if (root / "index.html").is_file():

        async def index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(root / "index.html")

        async def favicon(request: web.Request) -> web.FileResponse:
            return web.FileResponse(root / "favicon.svg")  # what browsers ask for unprompted

        app.router.add_get("/", index)
        app.router.add_get("/favicon.ico", favicon)
        app.router.add_static("/web/", root, follow_symlinks=False)


def _publish_models(app: web.Application) -> None:
    services = app[SERVICES]
    g = services.metrics.model_ready
    for name in services.repo.names():
        services.metrics.model_seen(name)
    for row in services.repo.describe():
        if row["version"] is not None:
            g.labels(row["name"], row["version"]).set(1.0 if row["serving"] else 0.0)


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    """The per-frame metrics gather in plain Python (edge/metrics/buffer.py); the pulse
    publishes them while the app runs, and this once more at the very end."""
    yield
    app[SERVICES].metrics.flush()


async def _executor(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    yield
    services.background.shutdown(wait=True, cancel_futures=True)


async def _sinks(app: web.Application) -> AsyncIterator[None]:
    """Result sinks (edge/sinks): each one's task connects in the background; at the end
    each gets a moment to publish what it holds."""
    publisher = app[SERVICES].publisher
    publisher.start()
    yield
    await publisher.stop()


async def _workers(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    services.scheduler.start()
    yield
    await services.scheduler.stop()
    services.repo.close()  # no worker runs a model any more


async def _models(app: web.Application) -> AsyncIterator[None]:
    """Load models in the background and watch the repository for new versions."""
    services = app[SERVICES]
    watcher = asyncio.create_task(_watch(services), name="model-watcher")
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def _watch(services: Services) -> None:
    """Scan the repository now, then every `watch_models_s` (0: never) and on request
    (SIGHUP, POST /v1/models/{name}/load)."""
    interval = services.settings.watch_models_s
    shared = services.cluster.shared
    while True:
        asked = int(shared.header["reload_gen"])  # the reloads this scan answers
        try:
            await services.repo.refresh(services.background)
        except Exception:
            log.exception("model repository scan failed")
        shared.me["reload_done"] = max(int(shared.me["reload_done"]), asked)
        try:
            async with timeout(interval if interval > 0 else None):
                await services.reload.wait()
        except asyncio.TimeoutError:
            pass
        services.reload.clear()


async def drain(app: web.Application) -> None:
    """Graceful drain: readiness off, no new streams, every stream answered and told goaway.
    Idempotent: the signal handler calls it while still listening, cleanup calls it again."""
    services = app[SERVICES]
    if services.draining:
        return
    services.draining = True
    delay = min(services.settings.drain_delay_s, services.settings.drain_seconds / 2)
    if services.sessions and delay > 0:
        log.info("draining: readiness off; streams told goaway in %g s", delay)
        await asyncio.sleep(delay)
    sessions = list(services.sessions)
    if sessions:
        log.info("draining %d stream(s)", len(sessions))
        retry = 1000
        try:
            async with timeout(max(1.0, services.settings.drain_seconds - 1.0)):
                await asyncio.gather(*(s.goaway(retry) for s in sessions), return_exceptions=True)
        except asyncio.TimeoutError:
            log.warning("drain: streams still open after the grace period")
