"""Several serving processes behind one port, as clients and operators see the gateway: one
address, one /metrics, gateway-wide limits, a supervisor that replaces a dead process, drain
and reload that reach every process (docs/architecture.md, "Several processes")."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess, wait_ready
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, wait_until
from tests.test_models import add_version, face_repo_copy
from tests.test_overload import NO_RATE_LIMITS
from tests.wsclient import Books, open_stream, read_into

pytestmark = pytest.mark.integration

TWO = {"EDGE_PROCESSES": "2", **NO_RATE_LIMITS}
Spawn = Callable[..., GatewayProcess]


def fresh() -> aiohttp.ClientSession:
    """A client that opens a new connection per request, so requests reach either process."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def streams_on_both(
    http: aiohttp.ClientSession, url: str, n: int = 4
) -> list[tuple[aiohttp.ClientWebSocketResponse, Books]]:
    """`n` streams, and more (a few at most) until both processes hold some: on a busy
    machine a process whose loop lags is passed over for a moment, by design."""
    clients = [await open_stream(http, url) for _ in range(n)]
    while {b.hello["process"] for _, b in clients} != {0, 1} and len(clients) < n + 8:
        clients.append(await open_stream(http, url))
    spread = sorted(b.hello["process"] for _, b in clients)
    assert set(spread) == {0, 1}, f"streams not spread over the processes: {spread}"
    return clients


async def start(spawn: Spawn, repo: Path, **env: str) -> GatewayProcess:
    gw = spawn(repo, {**TWO, **env})
    await wait_ready(gw.url)
    assert sorted(gw.serving()) == [0, 1], gw.log.read_text()[-2000:]
    return gw


async def test_streams_spread_and_one_metrics_endpoint_adds_them_up(
    spawn_gateway: Spawn, face_repo: Path, face_jpeg: bytes
) -> None:
    """Guards against per-process metrics (a scrape that sees only the process it reached),
    and against streams piling onto one process."""
    gw = await start(spawn_gateway, face_repo)
    async with aiohttp.ClientSession() as http:
        clients = await streams_on_both(http, gw.url)
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        async with fresh() as probe:
            during = await scrape(probe, gw.url)
        assert total(during, "edge_active_streams", transport="websocket") == len(clients)
        await asyncio.gather(*(blast(ws, b, face_jpeg, 2.0, 40.0) for ws, b in clients))
        for ws, b in clients:  # every frame answered before we close
            within = deadline(frames=2, streams=len(clients))
            await wait_until(lambda b=b: not b.unanswered(), within, b.unanswered)
            await ws.close()
        await asyncio.gather(*readers)
    sent = sum(len(b.sent_at) for _, b in clients)
    results = sum(b.kinds().get("result", 0) for _, b in clients)
    async with fresh() as probe:
        scrapes = [await scrape(probe, gw.url) for _ in range(4)]
    m = "blazeface"
    for after in scrapes:  # whichever process answered the scrape
        received = total(after, "edge_frames_received_total", transport="websocket", model=m)
        processed = total(after, "edge_frames_processed_total", transport="websocket", model=m)
        dropped = total(after, "edge_frames_dropped_total", transport="websocket", model=m)
        assert received == sent and processed == results
        assert received == processed + dropped
        assert total(after, "edge_active_streams", transport="websocket") == 0
        assert total(after, "edge_model_ready", model=m, version="1") == 1
        assert total(after, "edge_process_restarts_total") == 0
        assert total(after, "edge_build_info") == 1
        assert {ls for n, ls in after if n == "edge_process_resident_bytes"} == {
            (("process", "0"),),
            (("process", "1"),),
        }


async def test_max_streams_holds_for_the_whole_gateway(
    spawn_gateway: Spawn, face_repo: Path
) -> None:
    """Guards against a limit counted per process (N processes x max_streams streams)."""
    gw = await start(spawn_gateway, face_repo, EDGE_MAX_STREAMS="3")
    async with aiohttp.ClientSession() as http:
        held = [await open_stream(http, gw.url) for _ in range(3)]
        assert {b.hello["process"] for _, b in held} == {0, 1}
        for _ in range(4):  # new connections go to either process; each refuses
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(gw.url.replace("http", "ws") + "/v1/stream")
            assert e.value.status == 503
        await held[0][0].close()

        async def reopened() -> bool:
            try:
                ws, _ = await open_stream(http, gw.url)
            except aiohttp.WSServerHandshakeError:
                return False
            held.append((ws, Books()))
            return True

        await wait_until(reopened, deadline(), "a slot freed by a closed stream")
        for ws, _ in held:
            await ws.close()


async def test_a_killed_process_is_replaced_and_the_others_never_notice(
    spawn_gateway: Spawn, face_repo: Path, face_jpeg: bytes
) -> None:
    """kill -9 one serving process mid-stream: its clients are closed, the other process's
    streams keep every frame answered exactly once, readiness says a process is missing until
    the replacement is warm, and the restart is counted."""
    gw = await start(spawn_gateway, face_repo)
    victim = 0
    old_pid = gw.serving()[victim]
    async with aiohttp.ClientSession() as http, fresh() as probe:
        clients = await streams_on_both(http, gw.url)
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        senders = [asyncio.create_task(blast(ws, b, face_jpeg, 600.0, 20.0)) for ws, b in clients]
        hit = [i for i, (_, b) in enumerate(clients) if b.hello["process"] == victim]
        kept = [i for i in range(len(clients)) if i not in hit]

        def results(i: int) -> int:
            return clients[i][1].kinds().get("result", 0)

        await wait_until(
            lambda: min(map(results, range(len(clients)))) >= 3,
            deadline(frames=3, streams=len(clients)),
            lambda: [results(i) for i in range(len(clients))],
        )
        os.kill(old_pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*(readers[i] for i in hit)), deadline())
        for i in hit:
            assert clients[i][0].closed
            senders[i].cancel()

        statuses: list[int] = []

        async def ready() -> bool:
            async with probe.get(gw.url + "/readyz") as r:
                statuses.append(r.status)
                return r.status == 200 and 503 in statuses

        await wait_until(  # a new process starts, loads and warms the model: a margin's worth
            ready, 3 * deadline(), lambda: f"readiness 503 then 200; got {statuses[-5:]}"
        )
        at_restart = {i: results(i) for i in kept}
        await wait_until(
            lambda: all(results(i) >= at_restart[i] + 5 for i in kept),
            deadline(frames=5, streams=len(clients)),
            "the other process's streams to keep getting results",
        )
        for i in kept:
            senders[i].cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        for i in kept:
            ws, b = clients[i]
            await wait_until(lambda b=b: not b.unanswered(), deadline(frames=2), b.unanswered)
            await ws.close()
            assert b.answered_twice() == []
        await asyncio.gather(*(readers[i] for i in kept))
        new_pid = gw.serving().get(victim)
        assert new_pid is not None and new_pid != old_pid
        again = [await open_stream(http, gw.url) for _ in range(2)]
        assert victim in {b.hello["process"] for _, b in again}  # the new process serves
        for ws, _ in again:
            await ws.send_bytes(face_jpeg)
            assert (await asyncio.wait_for(ws.receive_json(), deadline()))["type"] == "result"
            await ws.close()
        metrics = await scrape(probe, gw.url)
    assert total(metrics, "edge_process_restarts_total") == 1
    events = [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith("{")]
    assert any("died" in e["msg"] and e["level"] == "warning" for e in events)


async def test_sigterm_drains_every_process(
    spawn_gateway: Spawn, face_repo: Path, face_jpeg: bytes
) -> None:
    """SIGTERM to the supervisor: every stream on every process is answered, told goaway and
    closed with 1001, and the supervisor and its processes exit cleanly."""
    gw = await start(spawn_gateway, face_repo, EDGE_DRAIN_SECONDS="10")
    pids = gw.pids()
    async with aiohttp.ClientSession() as http:
        clients = await streams_on_both(http, gw.url)
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        senders = [asyncio.create_task(blast(ws, b, face_jpeg, 600.0, 50.0)) for ws, b in clients]
        await wait_until(
            lambda: all(b.kinds().get("result") for _, b in clients),
            deadline(frames=1, streams=len(clients)),
            "results on every stream",
        )
        gw.signal(signal.SIGTERM)
        # EDGE_DRAIN_SECONDS, then the answers
        grace = 10 + deadline(frames=2, streams=len(clients))
        await asyncio.wait_for(asyncio.gather(*readers), grace)
        for s in senders:
            s.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    assert await asyncio.to_thread(gw.proc.wait, grace) == 0
    for ws, books in clients:
        assert ws.close_code == 1001
        assert books.other[-1]["type"] == "goaway"
        answered = set(books.replies)
        assert books.answered_twice() == []
        assert answered == set(range(len(answered))), "a frame the server took has no reply"
    for pid in pids:
        assert _gone(pid), f"pid {pid} outlived the drain"


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_reload_and_load_reach_every_process(
    spawn_gateway: Spawn, pulled: Path, tmp_path: Path
) -> None:
    """Guards against a hot reload seen by the one process that got the request: after
    `POST .../load` returns, and after SIGHUP, every process serves the new version (with
    canaries off: swapped in at once)."""
    repo = face_repo_copy(pulled, tmp_path / "repo")
    gw = await start(spawn_gateway, repo, EDGE_CANARY="0")

    async def versions_served() -> set[str]:
        async with aiohttp.ClientSession() as http:
            clients = await streams_on_both(http, gw.url)
            for ws, _ in clients:
                await ws.close()
        return {b.hello["model"] for _, b in clients}

    assert await versions_served() == {"blazeface@1"}
    add_version(pulled, repo, "2")
    async with fresh() as probe:
        async with probe.post(gw.url + "/v1/models/blazeface/load") as r:
            assert r.status == 200
            body = await r.json()
        assert body["processes"] == {"rescanned": 2, "of": 2}, body
        assert await versions_served() == {"blazeface@2"}

    add_version(pulled, repo, "3")
    gw.signal(signal.SIGHUP)

    async def everywhere() -> bool:
        return await versions_served() == {"blazeface@3"}

    await wait_until(everywhere, 3 * deadline(), "version 3 served by every process after SIGHUP")
    shutil.rmtree(repo)


# -- the pieces ------------------------------------------------------------------------------
@pytest.mark.unit
def test_shared_counts_hold_across_processes_and_die_with_one(tmp_path: Path) -> None:
    """Two processes' views of one file: a limit counts both; when one dies, the supervisor's
    `forget` gives back every slot it held, and only those."""
    from edge.sharedmem import Shared

    made = Shared.create(tmp_path / "shared", 2, 64)
    a, b = made.attach(0), Shared(2, 64, 1, tmp_path / "shared")
    assert a.acquire("streams:*", 3) and b.acquire("streams:*", 3) and b.acquire("streams:*", 3)
    assert not a.acquire("streams:*", 3) and a.count("streams:*") == 3
    assert b.acquire("token:x", 0) and a.count("token:x") == 1
    made.forget(1)  # process 1 died
    assert a.count("streams:*") == 1 and a.count("token:x") == 0
    assert a.acquire("streams:*", 3) and a.acquire("streams:*", 3)
    a.release("streams:*")
    a.release("nobody")  # releasing what is not held changes nothing
    assert b.count("streams:*") == 2
    for s in (a, b, made):
        s.close()


@pytest.mark.unit
def test_a_clients_frame_budget_is_shared_fairly_among_its_streams() -> None:
    """Guards against first-come-first-served: one client's 4 streams, one sending 4x as fast
    as the others, each get about a quarter of max_fps_per_client, not what they grab."""
    from edge.access import ratelimit
    from edge.core.outbox import Outbox
    from edge.core.stream import Stream
    from edge.models.repository import Route
    from edge.settings import Settings
    from edge.sharedmem import Shared

    async def send(_text: str) -> None:
        pass

    settings = Settings(max_fps_per_stream=0, max_fps_per_client=40)
    client = ratelimit.Client("client:10.0.0.7", 40, Shared(1, 64))
    token = ratelimit._CLIENT.set(client)
    try:
        streams = [
            Stream(f"s{i}", "test", Route("m"), Outbox(send, max_pending=1, send_timeout=1.0))
            for i in range(4)
        ]
        for s in streams:  # every stream has counted itself before the clock starts
            ratelimit.allow_frame(settings, s, 0.0)
        passed = [0] * 4
        # 5 s; stream 0 sends 400 frames/s, the others 100. Counted after the first second:
        # until a stream re-reads how many siblings it has, it may take more.
        for tick in range(1, 5001):
            now = tick / 1000
            for i, s in enumerate(streams):
                if i == 0 or tick % 4 == 0:
                    ok = ratelimit.allow_frame(settings, s, now) is None
                    passed[i] += ok and tick > 1000
    finally:
        ratelimit._CLIENT.reset(token)
    # The clock here is the test's own (`now` is passed in), not the machine's: these are
    # frames per simulated second, the same on any machine.
    rates = [p / 4 for p in passed]
    limit = settings.max_fps_per_client
    assert 0.9 * limit <= sum(rates) <= limit + 1, rates  # the client's budget, used
    assert max(rates) - min(rates) <= 0.025 * limit, rates  # in equal shares
    for s in streams:
        ratelimit.forget(s)
    assert client.shared.count(client.key) == 0


@pytest.mark.integration
async def test_a_lagging_event_loop_refuses_new_streams_until_it_catches_up(
    face_repo: Path,
) -> None:
    """Guards against frames ageing unseen in socket buffers: while this process's loop runs
    far behind, a new stream is refused 503 `busy` (the supervisor sends it elsewhere); once
    the loop catches up, streams are taken again."""
    from tests.conftest import running, settings_for

    settings = settings_for(face_repo, max_loop_lag_ms=100)
    async with running(settings) as (url, app), aiohttp.ClientSession() as http:
        stop = asyncio.Event()

        async def hog() -> None:  # holds the loop 3x the limit at a time
            while not stop.is_set():
                _block(0.3)
                await asyncio.sleep(0)

        hogging = asyncio.create_task(hog())
        try:

            async def refused() -> bool:
                try:
                    ws = await http.ws_connect(url.replace("http", "ws") + "/v1/stream")
                except aiohttp.WSServerHandshakeError as e:
                    assert e.status == 503
                    return True
                await ws.close()
                return False

            await wait_until(refused, deadline(), "a new stream refused while the loop lags")
            async with http.get(url + "/metrics") as r:
                assert 'edge_streams_refused_total{reason="busy",transport="websocket"}' in (
                    await r.text()
                )
        finally:
            stop.set()
            await hogging

        async def taken() -> bool:
            try:
                ws, _ = await open_stream(http, url)
            except aiohttp.WSServerHandshakeError:
                return False
            await ws.close()
            return True

        await wait_until(taken, deadline(), "a new stream taken once the loop caught up")


def _block(seconds: float) -> None:
    time.sleep(seconds)  # on purpose: stands in for an event loop too busy to read sockets
