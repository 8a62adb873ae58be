"""Overload, against `edge serve` as a separate process: latency stays bounded, memory too."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess, wait_ready
from tests.overload_util import blast
from tests.wsclient import open_stream, read_into

pytestmark = pytest.mark.integration

#: these tests overload the scheduler itself, so the per-client frame-rate limit stays out
NO_RATE_LIMITS = {"EDGE_MAX_FPS_PER_STREAM": "0", "EDGE_MAX_FPS_PER_CLIENT": "0"}


async def test_latency_stays_bounded_and_flat_under_overload(
    spawn_gateway, face_repo: Path, face_jpeg: bytes
) -> None:  # type: ignore[no-untyped-def]
    """Clients offering far more frames than the model can run: the age of the frame behind
    each result must stay bounded and must not grow over the run (a queueing server's ages
    grow by seconds), and every frame must be answered exactly once."""
    gw: GatewayProcess = spawn_gateway(face_repo, NO_RATE_LIMITS)
    await wait_ready(gw.url)
    seconds = 12.0
    async with aiohttp.ClientSession() as http:
        clients = [await open_stream(http, gw.url) for _ in range(6)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        await asyncio.gather(*(blast(ws, b, face_jpeg, seconds, 200.0) for ws, b in clients))
        await asyncio.sleep(1.0)
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*readers), 10)
    ages = sorted(a for _, books in clients for a in books.result_ages())
    assert len(ages) > 200
    for _, books in clients:
        assert books.unanswered() == [] and books.answered_twice() == []
        assert books.kinds().get("dropped:stale", 0) > 0
    arrivals = sorted(t_a for _, books in clients for t_a in books.result_ages())
    t0, t1 = arrivals[0][0], arrivals[-1][0]
    first = [a for t, a in arrivals if t < t0 + (t1 - t0) / 3]
    last = [a for t, a in arrivals if t > t0 + 2 * (t1 - t0) / 3]
    p95 = [a for _, a in arrivals][int(0.95 * len(arrivals))]
    assert statistics.median(a for _, a in arrivals) < 0.25, "ages are not bounded"
    assert p95 < 0.5
    assert statistics.median(last) < 2 * statistics.median(first) + 0.05, "ages grow"


async def test_a_client_that_never_reads_does_not_grow_memory(
    spawn_gateway, face_repo: Path, face_jpeg: bytes
) -> None:  # type: ignore[no-untyped-def]
    """A client that sends hundreds of megabytes but does not read its replies: the server's
    memory must stay flat, other clients must be served meanwhile, and when the client finally
    reads, every frame it sent has exactly one reply waiting."""
    gw: GatewayProcess = spawn_gateway(face_repo)
    await wait_ready(gw.url)
    payload = face_jpeg + b"\x00" * (200_000 - len(face_jpeg))  # big frames fill buffers fast
    async with aiohttp.ClientSession() as http:
        ws, books = await open_stream(http, gw.url)
        start_rss = gw.rss_mb()
        for seq in range(2000):  # 400 MB
            books.sent_at[seq] = 0.0
            await ws.send_bytes(payload)
            if seq % 100 == 0:
                assert gw.rss_mb() - start_rss < 60, f"RSS grew after {seq} frames"
        assert gw.rss_mb() - start_rss < 60
        good, _ = await open_stream(http, gw.url)
        await good.send_bytes(face_jpeg)
        reply = await asyncio.wait_for(good.receive_json(), 5)
        assert reply["type"] == "result" and reply["detections"]
        await good.close()
        await asyncio.sleep(1.0)
        reader = asyncio.create_task(read_into(ws, books))
        await asyncio.sleep(1.0)
        await ws.close()
        await asyncio.wait_for(reader, 10)
        assert books.unanswered() == [] and books.answered_twice() == []
        assert books.kinds().get("result", 0) > 0
