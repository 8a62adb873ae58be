"""Operating the gateway: metrics, admission control and graceful drain, as operators see it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess, running, settings_for, wait_ready
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, outpacing_fps, wait_until
from tests.test_overload import NO_RATE_LIMITS
from tests.wsclient import next_reply, open_stream, read_into

pytestmark = pytest.mark.integration


async def test_metrics_move_as_frames_flow(face_repo: Path, face_jpeg: bytes) -> None:
    """Each named series moves during a multi-stream run, and the books balance:
    received = processed + dropped + errors, matching what the clients were told."""
    settings = settings_for(face_repo, max_fps_per_stream=0, max_fps_per_client=0)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        before = await scrape(http, url)
        assert total(before, "edge_model_ready", model="blazeface", version="1") == 1
        for stage in ("decode", "preprocess", "session", "postprocess"):  # there at zero
            key = ("edge_stage_seconds_count", (("model", "blazeface"), ("stage", stage)))
            assert before.get(key) == 0
        clients = [await open_stream(http, url) for _ in range(3)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        during = await scrape(http, url)
        assert total(during, "edge_active_streams", transport="websocket") == 3
        fps = max(500.0, outpacing_fps(len(clients)))  # frames are superseded: stale drops
        await asyncio.gather(*(blast(ws, b, face_jpeg, 2.0, fps) for ws, b in clients))
        await clients[0][0].send_bytes(b"garbage")
        clients[0][1].sent_at[len(clients[0][1].sent_at)] = 0.0
        await wait_until(
            lambda: all(not b.unanswered() for _, b in clients),
            deadline(frames=2, streams=len(clients)),
            lambda: [b.unanswered() for _, b in clients],
        )
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*readers), deadline())
        after: dict[tuple[str, tuple], float] = {}

        async def settled() -> bool:  # a worker lowers in-flight just after its last reply
            after.update(await scrape(http, url))
            return total(after, "edge_active_streams") == total(after, "edge_inflight_frames") == 0

        await wait_until(
            settled,
            deadline(),
            lambda: (
                f"streams {total(after, 'edge_active_streams')} and frames in flight "
                f"{total(after, 'edge_inflight_frames')} to reach 0"
            ),
        )
    kinds: dict[str, int] = {}
    sent = 0
    for _, books in clients:
        sent += len(books.sent_at)
        assert books.unanswered() == []
        for k, v in books.kinds().items():
            kinds[k] = kinds.get(k, 0) + v
    m = "blazeface"
    received = total(after, "edge_frames_received_total", transport="websocket", model=m)
    processed = total(after, "edge_frames_processed_total", transport="websocket", model=m)
    dropped = total(after, "edge_frames_dropped_total", transport="websocket", model=m)
    errors = total(after, "edge_frame_errors_total", transport="websocket")
    assert received == sent
    assert received == processed + dropped + errors
    assert processed == kinds["result"]
    assert dropped == total(after, "edge_frames_dropped_total", reason="stale") > 0
    assert errors == total(after, "edge_frame_errors_total", stage="decode") == 1
    assert total(after, "edge_inference_latency_seconds_count", model=m) >= processed
    assert (
        total(after, "edge_frame_latency_seconds_count", transport="websocket", model=m)
        == processed + errors
    )
    assert total(after, "edge_queue_wait_seconds_count", model=m) == processed
    assert total(after, "edge_batch_size_count", model=m) > 0
    # stage timings: one per frame that reached the stage, one session call per batch,
    # and the session call is part of the model run around it
    for stage in ("decode", "preprocess", "postprocess"):
        assert total(after, "edge_stage_seconds_count", model=m, stage=stage) == processed
    assert total(after, "edge_stage_seconds_count", model=m, stage="session") == total(
        after, "edge_batch_size_count", model=m
    )
    session_s = total(after, "edge_stage_seconds_sum", model=m, stage="session")
    assert 0 < session_s <= total(after, "edge_inference_latency_seconds_sum", model=m)
    assert total(after, "edge_active_streams", transport="websocket") == 0
    assert total(after, "edge_inflight_frames", model=m) == 0
    assert total(after, "edge_build_info") == 1


async def test_admission_refuses_stream_n_plus_1(face_repo: Path, face_jpeg: bytes) -> None:
    """With max_streams = N, stream N+1 gets 503 + Retry-After while the first N keep going."""
    async with (
        running(settings_for(face_repo, max_streams=2)) as (url, _),
        aiohttp.ClientSession() as http,
    ):
        a, _ = await open_stream(http, url)
        b, _ = await open_stream(http, url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(url.replace("http", "ws") + "/v1/stream")
        assert e.value.status == 503 and e.value.headers is not None
        assert "Retry-After" in e.value.headers
        for ws in (a, b):
            await ws.send_bytes(face_jpeg)
            assert (await next_reply(ws))["type"] == "result"
        await a.close()
        opened: list[aiohttp.ClientWebSocketResponse] = []

        async def a_slot_is_free_again() -> bool:
            try:
                opened.append((await open_stream(http, url))[0])
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 503, e
                return False
            return True

        await wait_until(a_slot_is_free_again, deadline(), "a third stream admitted after a close")
        await opened[0].close()
        await b.close()


async def test_sigterm_drains_every_stream(
    spawn_gateway, face_repo: Path, face_jpeg: bytes
) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM in the middle of several streams: readiness flips first, every frame sent is
    answered, each stream gets goaway and close 1001, the drain finishes within the grace
    (EDGE_DRAIN_SECONDS, sized from the frames in flight) and the process exits 0 soon after."""
    streams = 4
    grace = deadline(frames=2, streams=streams)
    env = {"EDGE_DRAIN_SECONDS": f"{grace:.1f}", **NO_RATE_LIMITS}
    gw: GatewayProcess = spawn_gateway(face_repo, env)
    await wait_ready(gw.url)
    async with aiohttp.ClientSession() as http:
        clients = [await open_stream(http, gw.url) for _ in range(streams)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        senders = [asyncio.create_task(blast(ws, b, face_jpeg, 30.0, 100.0)) for ws, b in clients]
        await wait_until(
            lambda: all(b.kinds().get("result", 0) > 0 for _, b in clients),
            deadline(frames=2, streams=streams),
            lambda: [b.kinds() for _, b in clients],
        )
        t_signal = time.monotonic()
        gw.signal(signal.SIGTERM)

        async def not_ready() -> bool:
            async with http.get(gw.url + "/readyz") as r:
                return r.status == 503

        await wait_until(not_ready, deadline(), "/readyz to answer 503 after SIGTERM")
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(gw.url.replace("http", "ws") + "/v1/stream")
        await asyncio.wait_for(asyncio.gather(*readers), grace + deadline())
        for s in senders:
            s.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        limit = grace + deadline()  # the drain's grace, then the process ends
        try:
            exit_code = await asyncio.to_thread(
                gw.proc.wait, max(0.0, t_signal + limit - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {limit:.1f} s after SIGTERM (grace {grace:.1f} s)")
    assert exit_code == 0
    for ws, books in clients:
        assert ws.close_code == 1001
        assert books.other[-1]["type"] == "goaway" and books.other[-1]["retry_after_ms"] > 0
        # frames still in flight on the client's side when the server closed are not the
        # server's to answer; every frame the server took is answered exactly once
        answered = set(books.replies)
        assert books.answered_twice() == []
        assert answered == set(range(len(answered))), "a frame the server took has no reply"
        assert books.kinds().get("result", 0) > 0
    events = [json.loads(line) for line in gw.log.read_text().splitlines()]
    assert any("draining" in e["msg"] for e in events)
    late = [e["msg"] for e in events if "did not finish" in e["msg"] or "still open" in e["msg"]]
    assert not late, f"the drain overran its grace of {grace:.1f} s: {late}"
    sessions = {b.hello["session"] for _, b in clients}
    closed = [e for e in events if e["msg"].startswith("session=") and "closed" in e["msg"]]
    assert {e["session"] for e in closed} == sessions
    assert all(e["code"] == 1001 for e in closed)
