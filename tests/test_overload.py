"""Overload, against `edge serve` as a separate process: latency stays bounded, memory too."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess, wait_ready
from tests.overload_util import blast
from tests.pace import deadline, outpacing_fps, wait_until
from tests.wsclient import next_reply, open_stream, read_into

pytestmark = pytest.mark.integration

#: these tests overload the scheduler itself, so the per-client frame-rate limit stays out
NO_RATE_LIMITS = {"EDGE_MAX_FPS_PER_STREAM": "0", "EDGE_MAX_FPS_PER_CLIENT": "0"}
#: how many rounds over the streams the median and the 95th percentile of the ages may span
MEDIAN_ROUNDS, P95_ROUNDS = 5, 30


async def test_latency_stays_bounded_and_flat_under_overload(
    spawn_gateway, face_repo: Path, face_jpeg: bytes
) -> None:  # type: ignore[no-untyped-def]
    """Clients offering far more frames than the model can run: the age of the frame behind
    each result must stay within a few rounds over the streams (a round measured in this run:
    the streams over the results served a second) and must not grow over the run (a queueing
    server's ages grow by seconds, hundreds of rounds), and every frame must be answered
    exactly once."""
    gw: GatewayProcess = spawn_gateway(face_repo, NO_RATE_LIMITS)
    await wait_ready(gw.url)
    seconds, enough = 12.0, 300
    async with aiohttp.ClientSession() as http:
        clients = [await open_stream(http, gw.url) for _ in range(6)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        fps = max(200.0, outpacing_fps(len(clients)))  # as fast as a client sends, at least
        senders = [asyncio.create_task(blast(ws, b, face_jpeg, 3600, fps)) for ws, b in clients]
        # for `seconds`, and on until there are enough ages to take percentiles of
        await asyncio.sleep(seconds)
        await wait_until(
            lambda: sum(len(b.result_ages()) for _, b in clients) >= enough,
            deadline(frames=enough),
            lambda: f"{enough} results: {sum(len(b.result_ages()) for _, b in clients)}",
        )
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        outstanding = sum(len(b.unanswered()) for _, b in clients)
        await wait_until(
            lambda: all(not b.unanswered() for _, b in clients),
            deadline(frames=outstanding),
            lambda: [b.unanswered() for _, b in clients],
        )
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*readers), deadline())
    for _, books in clients:
        assert books.unanswered() == [] and books.answered_twice() == []
        assert books.kinds().get("dropped:stale", 0) > 0
    arrivals = sorted(t_a for _, books in clients for t_a in books.result_ages())
    t0, t1 = arrivals[0][0], arrivals[-1][0]
    round_s = len(clients) * (t1 - t0) / len(arrivals)  # each stream served once, measured
    third = (t1 - t0) / 3
    first = [a for t, a in arrivals if t < t0 + third]
    last = [a for t, a in arrivals if t > t1 - third]
    # a third's ages in rounds of that third: a machine that gets busier mid-run serves
    # fewer frames then, and its ages are no more rounds old; a queue's are ever more
    first_rounds = statistics.median(first) / (len(clients) * third / len(first))
    last_rounds = statistics.median(last) / (len(clients) * third / len(last))
    median = statistics.median(a for _, a in arrivals)
    p95 = sorted(a for _, a in arrivals)[int(0.95 * len(arrivals))]
    figures = (
        f"round {round_s * 1e3:.1f} ms; ages: median {median * 1e3:.1f} ms, p95 "
        f"{p95 * 1e3:.1f} ms; median of the first third {first_rounds:.2f} rounds of that "
        f"third, of the last {last_rounds:.2f}"
    )
    print(figures)
    assert median < MEDIAN_ROUNDS * round_s, f"ages are not bounded: {figures}"
    assert p95 < P95_ROUNDS * round_s, f"ages are not bounded: {figures}"
    assert last_rounds < 2 * first_rounds + 2, f"ages grow: {figures}"


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
        reply = await next_reply(good)
        assert reply["type"] == "result" and reply["detections"]
        await good.close()
        reader = asyncio.create_task(read_into(ws, books))
        # the server read all 2000 frames (each superseded, or its reply held back): a frame
        # of work each at most
        await wait_until(lambda: not books.unanswered(), deadline(frames=2000), books.unanswered)
        await ws.close()
        await asyncio.wait_for(reader, deadline())
        assert books.unanswered() == [] and books.answered_twice() == []
        assert books.kinds().get("result", 0) > 0
