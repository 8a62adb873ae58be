"""The naive server the gateway is compared against: the same model, every frame answered in
the order it came. Each connection reads a frame, runs it (on a thread pool, one thread per
core, one single-threaded session shared by them), answers it, then reads the next. Under
overload frames wait in the socket buffers, in order, and their age grows until the buffers
are full; latest-frame-wins is what the gateway does instead.

    python -m edge.bench.naive --port 8099 --models models --model blazeface

It speaks the smallest part of the stream protocol (docs/protocol.md) a benchmark client
needs: `GET /v1/stream` (a hello, then one `result` per binary frame, `seq` in order) and
`GET /readyz` (200 once the model is loaded and has run once)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import WSMsgType, web

from edge.bench.baselines import Stages, ort_providers

STAGES = web.AppKey("stages", Stages)
POOL = web.AppKey("pool", ThreadPoolExecutor)


async def stream(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    await ws.send_json({"type": "hello", "protocol": 1, "server": "naive"})
    loop = asyncio.get_running_loop()
    stages, pool = request.app[STAGES], request.app[POOL]
    seq = 0
    async for msg in ws:
        if msg.type != WSMsgType.BINARY:
            continue
        try:
            payload = await loop.run_in_executor(pool, stages.run, msg.data)
            await ws.send_json({"type": "result", "seq": seq, **payload})
        except Exception as e:  # a bad frame is answered, the stream goes on
            await ws.send_json({"type": "error", "seq": seq, "message": str(e)})
        seq += 1
    return ws


async def ready(_request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


def make_app(models: Path, model: str, providers: str) -> web.Application:
    app = web.Application()
    stages = Stages(models, model, ort_providers(providers), threads=1)
    app[STAGES] = stages

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="naive")
        yield
        app[POOL].shutdown(wait=True)

    app.cleanup_ctx.append(pool)
    app.router.add_get("/v1/stream", stream)
    app.router.add_get("/readyz", ready)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--providers", default="cpu")
    args = ap.parse_args(argv)
    app = make_app(args.models, args.model, args.providers)
    app[STAGES].run(_warmup_frame())  # loaded and run once before /readyz can answer
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


def _warmup_frame() -> bytes:
    from edge.bench.frames import frame_jpeg

    return frame_jpeg((320, 240))


if __name__ == "__main__":
    main()
