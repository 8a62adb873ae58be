"""KServe v2 (Open Inference Protocol) over REST, on the main HTTP port: a thin adapter from
HTTP to edge.kserve. Errors are the protocol's: an HTTP status and `{"error": "..."}`.

Health probes (`/v2/health/...`) are open like /healthz; every other `/v2` request goes
through the same guard as `/v1/` (edge.access.auth), and an infer request through the same
admission (edge.core.admission.admit_request) as every unary call on every transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edge.compat import timeout
from edge.core import admission
from edge.core.admission import NotAdmitted
from edge.core.services import SERVICES, Services
from edge.kserve import metadata, rest
from edge.kserve.errors import KServeError, refused
from edge.kserve.infer import infer
from edge.kserve.messages import InferRequest
from edge.kserve.metadata import Target

log = logging.getLogger("edge.kserve")

TRANSPORT = "kserve"
#: bodies and responses larger than this are parsed and encoded off the event loop
INLINE_BYTES = 64 * 1024
#: large bodies one process parses at once (each holds the interpreter while json.loads
#: runs; more at once would only add their memory); the others wait their turn
PARSES_AT_ONCE = 2
_parses: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _protocol_errors(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KServeError as e:
            return error(e.http_status, e.message)

    return wrapped


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@routes.get("/v2")
async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response(metadata.server_metadata())


@routes.get("/v2/health/live")
async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


@routes.get("/v2/health/ready")
async def ready(request: web.Request) -> web.Response:
    reasons = request.app[SERVICES].not_ready()
    if reasons:  # the protocol: 200 is true, a 4xx false
        return web.json_response({"ready": False, "error": "; ".join(reasons)}, status=400)
    return web.json_response({"ready": True})


@routes.get("/v2/models/{name}")
@routes.get("/v2/models/{name}/versions/{version}")
@_protocol_errors
async def model_metadata(request: web.Request) -> web.Response:
    target, version = _target(request)
    return web.json_response(metadata.model_metadata(request.app[SERVICES].repo, target, version))


@routes.get("/v2/models/{name}/ready")
@routes.get("/v2/models/{name}/versions/{version}/ready")
@_protocol_errors
async def model_ready(request: web.Request) -> web.Response:
    target, version = _target(request)
    try:
        metadata.resolve(request.app[SERVICES].repo, target, version)
    except KServeError as e:
        if e.kind == "not_found":
            raise
        body = {"name": target.public, "ready": False, "error": e.message}
        return web.json_response(body, status=400)  # the protocol: a 4xx is false
    return web.json_response({"name": target.public, "ready": True})


@routes.post("/v2/models/{name}/infer")
@routes.post("/v2/models/{name}/versions/{version}/infer")
@_protocol_errors
async def model_infer(request: web.Request) -> web.Response:
    target, version = _target(request)
    services = request.app[SERVICES]
    try:
        hold = admission.admit_request(services, TRANSPORT, request.remote)
    except NotAdmitted as e:
        error = refused(e.refusal)
        retry = e.refusal.retry_after_s
        headers = None if retry is None else {"Retry-After": str(retry)}
        return web.json_response(
            {"error": error.message}, status=error.http_status, headers=headers
        )
    with hold:
        return await _infer(request, services, target, version)


async def _infer(
    request: web.Request, services: Services, target: Target, version: str
) -> web.Response:
    metadata.resolve(services.repo, target, version)  # 404 before the body is read
    settings = services.settings
    header = request.headers.get(rest.HEADER)
    # a body of JSON alone is held to the JSON limit before it is read
    limit = settings.max_infer_bytes
    if header is None:
        limit = min(limit, settings.max_json_bytes)
    body = await read_body(request, limit, settings.request_timeout_s)

    def parse() -> InferRequest:
        return rest.parse_request(
            target.public,
            version,
            body,
            header,
            max_element_bytes=settings.max_frame_bytes,
            max_json_bytes=settings.max_json_bytes,
        )

    req = await _parsed(parse, len(body))
    response = await infer(services, req, TRANSPORT, request.remote)
    data, json_length = await _off_loop(lambda: rest.encode_response(response, req), 0)
    if json_length is None:
        return web.Response(body=data, content_type="application/json")
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={rest.HEADER: str(json_length)},
    )


def _target(request: web.Request) -> tuple[Target, str]:
    version = request.match_info.get("version", "")
    if len(version) > 64:
        raise KServeError("not_found", "no such version")
    return Target.parse(request.match_info["name"]), version


async def _parsed(parse: Callable[[], InferRequest], size: int) -> InferRequest:
    """A body's request: a small one parsed here, a large one on a thread, at most
    PARSES_AT_ONCE of those at once in this process."""
    if size <= INLINE_BYTES:
        return parse()
    loop = asyncio.get_running_loop()
    parses = _parses.get(loop)
    if parses is None:
        parses = _parses[loop] = asyncio.Semaphore(PARSES_AT_ONCE)
    async with parses:
        return await asyncio.to_thread(parse)


async def _off_loop(work: Callable[[], Any], size: int) -> Any:
    """Run `work` here when `size` is small, else on a thread: parsing megabytes of JSON
    would stall every stream of this process."""
    if size <= INLINE_BYTES:
        return work()
    return await asyncio.to_thread(work)


async def read_body(request: web.Request, limit: int, within: float) -> bytes:
    """The request body, at most `limit` bytes (413 beyond, before reading it when the
    client says its length), in at most `within` seconds (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise KServeError("too_large", f"the request is larger than {limit} bytes")
    chunks = []
    size = 0
    try:
        async with timeout(within):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise KServeError("too_large", f"the request is larger than {limit} bytes")
                chunks.append(chunk)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(
            text=json.dumps({"error": f"request body not received within {within:g} s"}),
            content_type="application/json",
        ) from None
    return b"".join(chunks)
