"""Hostile clients and bad luck against a real gateway (issue #23, points 1, 2, 5 and 11): each
test is the attack or the fault, and asserts what a legitimate client sees meanwhile and what
the attacker gets. The threat table in docs/security.md names these tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess, running, settings_for, wait_ready
from tests.pace import deadline, poll, wait_until
from tests.wsclient import next_reply, open_stream

pytestmark = pytest.mark.integration

Spawn = Callable[..., GatewayProcess]
GOOD = "good-token-for-the-hostile-tests"
TWO = {"EDGE_PROCESSES": "2", "EDGE_MAX_FPS_PER_CLIENT": "0", "EDGE_MAX_FPS_PER_STREAM": "0"}


def elsewhere() -> aiohttp.ClientSession:
    """A client at another loopback address (127.0.0.2) than the attacker's (127.0.0.1)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))


async def healthz(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/healthz") as r:
        return r.status


# -- 1. authenticate before anything is reserved ------------------------------------------------
async def test_silent_unauthenticated_upgrades_hold_no_stream_slot(face_repo: Path) -> None:
    """Guards against token-less upgrades that say nothing taking the gateway's stream slots
    (or a pending pool as large as max_streams): with every pending place of the attacker's
    address held, its further upgrades get 503, while clients with a token open every one of
    max_streams streams, and a token-less client at another address still logs in."""
    settings = settings_for(
        face_repo,
        auth_tokens=(GOOD,),
        max_streams=3,
        max_pending_auth=8,
        max_pending_auth_per_client=4,
        auth_timeout_s=600.0,  # the attacker's sockets stay pending for the whole test
    )
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        ws_url = url.replace("http", "ws", 1) + "/v1/stream"
        silent = [await http.ws_connect(ws_url, protocols=("edge.v1",)) for _ in range(4)]
        for _ in range(3):  # the attacker's address is at its pending cap
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(ws_url, protocols=("edge.v1",))
            assert e.value.status == 503
        held = []
        for _ in range(2):  # clients with a token take max_streams - 1 slots...
            ws, books = await open_stream(http, url, headers={"Authorization": f"Bearer {GOOD}"})
            assert books.hello["type"] == "hello"
            held.append(ws)
        async with elsewhere() as other:  # ...and one logs in by message from elsewhere
            ws = await other.ws_connect(ws_url, protocols=("edge.v1",))
            await ws.send_json({"type": "auth", "token": GOOD})
            assert (await next_reply(ws))["type"] == "hello"
            assert await healthz(http, url) == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:  # now max_streams holds
                await http.ws_connect(ws_url, headers={"Authorization": f"Bearer {GOOD}"})
            assert e.value.status == 503
            await ws.close()
        for ws in [*held, *silent]:
            assert not ws.closed
            await ws.close()


async def test_with_auth_off_one_address_cannot_take_every_stream(face_repo: Path) -> None:
    """Guards against one client address holding all max_streams slots while authentication
    is off: past max_streams_per_client it gets 503 + Retry-After, another address is served."""
    settings = settings_for(face_repo, max_streams=4, max_streams_per_client=2)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        held = [(await open_stream(http, url))[0] for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await open_stream(http, url)
        assert e.value.status == 503 and e.value.headers is not None
        assert e.value.headers.get("Retry-After") == "1"
        async with elsewhere() as other:
            ws, books = await open_stream(other, url)
            assert books.hello["type"] == "hello"
            await ws.close()
        for ws in held:
            await ws.close()


# -- 2. descriptors ------------------------------------------------------------------------------
def _limit_open_files(gw: GatewayProcess, n: int) -> dict[int, int]:
    """Set the open-file limit of each serving process to `n` (soft and hard); index -> pid."""
    pids = gw.serving()
    for pid in pids.values():
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (n, n))
    return pids


async def _idle_connections(url: str, n: int) -> list[socket.socket]:
    """`n` TCP connections that never send a byte."""
    host, port = url.removeprefix("http://").split(":")
    conns = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        conns.append(s)
        await asyncio.sleep(0)
    return conns


async def _after_the_flood(gw: GatewayProcess, pids: dict[int, int]) -> None:
    """What a legitimate client sees once the idle connections are gone: the same processes,
    alive, ready and serving; none drained."""
    await wait_ready(gw.url, within=deadline())
    async with aiohttp.ClientSession() as http:
        assert await healthz(http, gw.url) == 200
        ws, books = await open_stream(http, gw.url)
        assert books.hello["type"] == "hello"
        await ws.close()
    assert gw.serving() == pids, gw.log.read_text()[-3000:]
    assert "draining" not in gw.log.read_text()


@pytest.mark.parametrize("cap", ["auto", "off"])
async def test_a_flood_of_idle_connections_at_the_open_file_limit_degrades(
    spawn_gateway: Spawn, face_repo: Path, cap: str
) -> None:
    """Guards against a serving process at its open-file limit reading a handed-over
    connection that arrived without its descriptor (MSG_CTRUNC) as the supervisor going away,
    and draining. 600 idle connections against processes limited to 256 open files: with the
    connection cap ("auto") the connections past it are answered 503 + Retry-After; with the
    cap out of the way ("off") the kernel drops descriptors. Either way no process drains or
    dies, and once the flood is gone a client is served by the same processes."""
    env = {**TWO, "EDGE_REQUEST_TIMEOUT_S": "600"}  # the idle connections stay open
    if cap == "off":
        env["EDGE_MAX_CONNECTIONS"] = "100000"
    gw = spawn_gateway(face_repo, env)
    await wait_ready(gw.url)
    pids = _limit_open_files(gw, 256)
    conns = await _idle_connections(gw.url, 600)
    try:
        if cap == "auto":
            refused = b""

            async def answered() -> bool:
                nonlocal refused
                for s in conns:
                    with contextlib.suppress(BlockingIOError, OSError):
                        refused = refused or s.recv(4096)
                return refused.startswith(b"HTTP/1.1 503")

            await wait_until(answered, deadline(), "a connection over the cap answered 503")
            assert b"Retry-After: 1" in refused
        else:
            poll(lambda: "connection(s) lost" in gw.log.read_text(), deadline(), "descriptors lost")
        async with aiohttp.ClientSession() as http:  # a clear answer or a close, never a hang
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(gw.url + "/healthz") as r:
                    assert r.status == 200 or r.headers.get("Retry-After") == "1"
        assert gw.serving() == pids
    finally:
        for s in conns:
            s.close()
    await _after_the_flood(gw, pids)


# -- 5. signals at any moment --------------------------------------------------------------------
def _handles(pid: int, sig: int) -> bool:
    """`pid` has `sig` blocked, ignored or caught: no longer its default action (exit). The
    earliest moment a test can signal a Python process; the interpreter's own start-up before
    it is outside any code of ours."""
    masks = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigBlk", "SigIgn", "SigCgt"):
            masks[key] = int(value.strip(), 16)
    held = masks["SigBlk"] | masks["SigIgn"] | masks["SigCgt"]
    return bool(held >> (sig - 1) & 1)


def _first_serving(gw: GatewayProcess) -> dict[int, int]:
    poll(lambda: len(gw.serving()) == 2, deadline(), "two serving processes started")
    return gw.serving()


async def test_reloads_during_start_up_kill_no_process(
    spawn_gateway: Spawn, face_repo: Path
) -> None:
    """Guards against SIGHUP's default action (exit) reaching a process before its handler is
    in place, and a reload loop keeping a starting process down: SIGHUP and SIGUSR1 sent to
    the supervisor and to each serving process from their first moments on leave the same
    processes to become ready, with no restart."""
    gw = spawn_gateway(face_repo, TWO)
    poll(lambda: _handles(gw.proc.pid, signal.SIGHUP), deadline(), "the supervisor's handler")
    for _ in range(3):
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0)
    pids = _first_serving(gw)
    for _ in range(5):
        for pid in pids.values():
            for sig in (signal.SIGHUP, signal.SIGUSR1):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
    await wait_ready(gw.url)
    assert gw.serving() == pids, gw.log.read_text()[-3000:]
    assert "died" not in gw.log.read_text()
    async with aiohttp.ClientSession() as http:
        assert await healthz(http, gw.url) == 200


async def test_sigterm_during_start_up_exits_cleanly(spawn_gateway: Spawn, face_repo: Path) -> None:
    """Guards against SIGTERM during start-up killing processes without a drain: the
    supervisor and its starting processes exit, with status 0, none of them reported dead."""
    gw = spawn_gateway(face_repo, TWO)
    _first_serving(gw)
    gw.signal(signal.SIGTERM)
    poll(lambda: gw.proc.poll() is not None, deadline() * 4, "the supervisor exited")
    log = gw.log.read_text()
    assert gw.proc.returncode == 0, log[-3000:]
    assert "died" not in log and "killing" not in log, log[-3000:]


def _gone(pid: int) -> bool:
    """Exited (a zombie that nobody reaped yet counts as exited)."""
    try:
        return "\tZ" in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
    except (FileNotFoundError, IndexError):
        return True


# -- 11. crashes leave nothing behind ------------------------------------------------------------
async def test_kill_9_of_the_supervisor_leaves_nothing_that_accumulates(
    spawn_gateway: Spawn, face_repo: Path, tmp_path: Path
) -> None:
    """Guards against a supervisor killed with -9 leaving its state directory (shared table,
    metrics files) behind, one per crash: after three kill -9s the next supervisor serves and
    its directory is the only one; an orderly stop leaves none."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**TWO, "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": ""}

    def states() -> list[str]:
        return sorted(p.name for p in tmp.glob("edge-gateway-*/*") if p.is_dir())

    for _ in range(3):
        gw = spawn_gateway(face_repo, env)
        await wait_ready(gw.url)
        assert len(states()) == 1, states()  # its own; what the killed one left is gone
        async with aiohttp.ClientSession() as http:
            assert await healthz(http, gw.url) == 200
        children = list(gw.serving().values())
        gw.proc.kill()
        gw.proc.wait()
        for pid in children:  # they die with it
            poll(lambda pid=pid: _gone(pid), deadline(), "a serving process gone")
        assert len(states()) == 1  # left behind, until the next start
    gw = spawn_gateway(face_repo, env)
    await wait_ready(gw.url)
    assert len(states()) == 1, states()
    gw.signal(signal.SIGTERM)
    poll(lambda: gw.proc.poll() is not None, deadline() * 4, "the supervisor exited")
    assert states() == [] and not list(tmp.glob("edge-gateway-*/*.lock"))
