"""Plain HTTP endpoints: health, readiness, model listing, unary inference, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from edge import codec
from edge.compat import timeout
from edge.core import admission
from edge.core import streams as common
from edge.core.admission import Kind, NotAdmitted, Refusal
from edge.core.services import SERVICES, Services
from edge.frames import Dropped, Error
from edge.inference.canarypolicy import CanaryPolicy, CanaryPolicyError

TRANSPORT = "http"

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    reasons = request.app[SERVICES].not_ready()
    if reasons:
        return web.json_response({"ready": False, "reasons": reasons}, status=503)
    return web.json_response({"ready": True})


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"models": request.app[SERVICES].repo.describe()})


@routes.post("/v1/models/{name}/load")
async def load_model(request: web.Request) -> web.Response:
    """Rescan a model in every process. An optional JSON body: `canary` (settings for the
    next trial of this model, over model.toml's `[canary]`), `retry` (true: try rolled-back
    versions again; `version` names one)."""
    services = request.app[SERVICES]
    name = request.match_info["name"]
    if name not in services.repo.names():
        return web.json_response({"error": "unknown_model", "message": name}, status=404)
    body = await read_body(request, services.settings.request_timeout_s)
    try:
        order = json.loads(body) if body.strip() else {}
        if not isinstance(order, dict) or set(order) - {"canary", "retry", "version"}:
            raise ValueError('the body is a JSON object with "canary", "retry" and "version"')
        canary = order.get("canary", {})
        if not isinstance(canary, dict) or not isinstance(order.get("retry", False), bool):
            raise ValueError('"canary" is an object of canary settings and "retry" a boolean')
        CanaryPolicy().updated(canary, "canary")  # checked before anything changes
    except (ValueError, CanaryPolicyError) as e:
        return _bad(str(e), 400, "bad_request")
    canaries = services.repo.canaries
    if canary:
        canaries.set_policy(name, canary)
    if order.get("retry"):
        canaries.retry(name, None if order.get("version") is None else str(order["version"]))
    reloaded = await reload_everywhere(services, name)
    rows = [r for r in services.repo.describe() if r["name"] == name]
    return web.json_response(
        {"models": rows, "processes": {"rescanned": reloaded, "of": services.cluster.size}}
    )


async def reload_everywhere(services: Services, name: str) -> int:
    """Rescan `name` here and have every other serving process rescan too (through the
    supervisor); wait, bounded by request_timeout_s, until each has. Returns how many did."""
    cluster = services.cluster
    shared = cluster.shared
    with shared.locked():
        shared.header["reload_gen"] += 1
        asked = int(shared.header["reload_gen"])
    if cluster.supervisor_pid:
        os.kill(cluster.supervisor_pid, signal.SIGUSR1)  # it sends every process SIGHUP
    await services.repo.refresh(services.background, [name])
    shared.me["reload_done"] = max(int(shared.me["reload_done"]), asked)

    def done() -> int:
        members = shared.members
        return int(((members["reload_done"] >= asked) & (members["pid"] != 0)).sum())

    deadline = time.monotonic() + services.settings.request_timeout_s
    for _ in range(100_000):  # polls shared memory: nothing here could set an Event
        if done() >= int((shared.members["pid"] != 0).sum()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    return done()


@routes.post("/v1/models/{name}/infer")
async def infer(request: web.Request) -> web.Response:
    """The unary Predict call: one image in the body, its result JSON back."""
    services = request.app[SERVICES]
    try:
        hold = admission.admit_request(services, TRANSPORT, request.remote)
    except NotAdmitted as e:
        return refusal_response(e.refusal)
    with hold:
        return await _infer(request, services)


async def _infer(request: web.Request, services: Services) -> web.Response:
    settings = services.settings
    try:
        route = admission.request_route(services, request.match_info["name"])
    except NotAdmitted as e:
        return refusal_response(e.refusal)
    if request.content_length is not None and request.content_length > settings.max_frame_bytes:
        return _bad(f"body is larger than {settings.max_frame_bytes} bytes", 413)
    try:
        body = await read_body(request, settings.request_timeout_s)
    except web.HTTPRequestEntityTooLarge:
        return _bad(f"body is larger than {settings.max_frame_bytes} bytes", 413)
    if len(body) > settings.max_frame_bytes:
        return _bad(f"body is larger than {settings.max_frame_bytes} bytes", 413)
    threshold = request.query.get("threshold")
    try:
        th = None if threshold is None else float(threshold)
        if th is not None and not 0.0 <= th <= 1.0:
            raise ValueError
    except ValueError:
        return _bad("threshold must be a number between 0 and 1", 400, "bad_request")

    # Through the same scheduler as the streams: fair with them, batched, counted.
    reply = await common.infer_once(services, TRANSPORT, route, body, th, client=request.remote)
    if reply is None:
        return _bad("no result in time", 503, "timeout")
    try:
        text = codec.unary(reply)
    except ValueError as e:  # NaN or an infinity, which JSON has not: as the stream's encoder
        return _bad(str(e), 400, "postprocess_failed")
    if isinstance(reply, Error):
        return web.Response(text=text, status=400, content_type="application/json")
    if isinstance(reply, Dropped):  # rate limited, or the gateway is overloaded
        status = 429 if reply.reason == "rate_limited" else 503
        headers = {"Retry-After": "1"}
        return web.Response(
            text=text, status=status, headers=headers, content_type="application/json"
        )
    return web.Response(text=text, content_type="application/json")


async def read_body(request: web.Request, within: float) -> bytes:
    """The whole request body, bounded by the app's client_max_size, in at most `within`
    seconds: a body trickled in a byte at a time is answered 408, not waited on for ever."""
    try:
        async with timeout(within):
            return await request.read()
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(
            text=json.dumps(
                {
                    "error": "request_timeout",
                    "message": f"request body not received within {within:g} s",
                }
            ),
            content_type="application/json",
        ) from None


#: how long a scrape waits for the other serving processes to publish their metrics
FLUSH_WAIT_S = 1.0


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await flush_everywhere(services)
    data = services.metrics.exposition()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def flush_everywhere(services: Services) -> None:
    """Have every serving process publish the per-frame metrics it gathered
    (edge/metrics/buffer.py) before a scrape reads them: each one's pulse answers within a beat;
    wait for them, bounded by FLUSH_WAIT_S (a process that lags more shows its last flush)."""
    shared = services.cluster.shared
    with shared.locked():
        shared.header["flush_gen"] += 1
        asked = int(shared.header["flush_gen"])
    shared.me["flush_done"] = asked  # exposition() flushes this process's own

    def waiting() -> bool:
        members = shared.members
        return bool(((members["flush_done"] < asked) & (members["pid"] != 0)).any())

    deadline = time.monotonic() + FLUSH_WAIT_S
    for _ in range(10_000):  # polls shared memory: nothing here could set an Event
        if not waiting() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


#: a refusal's kind as an HTTP status
HTTP_STATUS = {Kind.UNAVAILABLE: 503, Kind.NOT_FOUND: 404, Kind.EXHAUSTED: 429, Kind.INVALID: 400}


def refusal_response(refusal: Refusal) -> web.Response:
    """A refusal (edge.core.admission) over HTTP: its status, `{"error": reason, "message"}`,
    and Retry-After when waiting may help."""
    retry = refusal.retry_after_s
    return web.json_response(
        {"error": refusal.reason, "message": refusal.message},
        status=HTTP_STATUS[refusal.kind],
        headers=None if retry is None else {"Retry-After": str(retry)},
    )


def _bad(message: str, status: int, code: str = "bad_frame") -> web.Response:
    return web.json_response({"type": "error", "code": code, "message": message}, status=status)
