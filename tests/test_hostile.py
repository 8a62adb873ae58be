"""Hostile clients against real gateways on 127.0.0.1 (issue 23): each test is the attack,
and asserts what the attacker gets (a typed refusal, a close) and what a legitimate client
observes at the same time (it is served, /healthz answers, memory comes back)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from edge.settings import Settings
from tests import rawws
from tests.conftest import GatewayProcess, wait_ready
from tests.pace import deadline
from tests.wsclient import next_reply

pytestmark = pytest.mark.integration

GOOD = "good-token-0123456789abcdef"
FORGED = "2026-01-01 00:00:00,000 WARNING edge.supervisor: process 0 (pid 1) died"


async def test_a_client_cannot_forge_a_log_line(
    spawn_gateway: Callable[..., GatewayProcess], face_repo: Path
) -> None:
    """An encoded newline (or a terminal escape) in a request path must not start a line of
    the text log: a forged "process died" line would mislead whoever reads it."""
    gw = spawn_gateway(face_repo, {"EDGE_LOG_FORMAT": "text", "EDGE_AUTH_TOKENS": GOOD})
    await wait_ready(gw.url)
    async with aiohttp.ClientSession() as http:
        path = "/v1/models%0D%0A" + FORGED.replace(" ", "%20") + "%1B%5B2K%E2%80%A8"
        async with http.get(gw.url + path) as r:
            assert r.status == 401  # the attacker: refused, and the refusal logged
        async with http.get(
            gw.url + "/v1/models", headers={"Authorization": f"Bearer {GOOD}"}
        ) as r:
            assert r.status == 200
    gw.signal(signal.SIGTERM)
    await asyncio.to_thread(gw.proc.wait, Settings().drain_seconds + deadline())
    text = gw.log.read_text()
    lines = text.splitlines()
    refused = [ln for ln in lines if "refused GET" in ln]
    assert refused and "\\r\\n" + FORGED in refused[0], text[-2000:]
    assert "\\x1b[2K\\u2028" in refused[0]
    assert not any(ln.startswith(FORGED) for ln in lines)
    assert "\x1b" not in text and "\u2028" not in text


async def test_pings_from_a_client_that_never_reads_cost_no_memory(
    spawn_gateway: Callable[..., GatewayProcess], face_repo: Path, face_jpeg: bytes
) -> None:
    """A client that sends pings and never reads must not grow the gateway's memory: each
    pong used to queue without bound behind the full socket (only frames counted against
    the outbox's bound). Past the bound its pongs join one waiting pong; it would be cut off after
    send_timeout_s like any client that does not read); a reading client is served meanwhile."""
    pings = 600_000
    gw = spawn_gateway(face_repo, {"EDGE_SEND_TIMEOUT_S": "600"})
    await wait_ready(gw.url)
    one = rawws.frame(b'{"type":"ping"}', opcode=0x1)
    blob = b"".join(one[:2] + b"\0\0\0\0" + b'{"type":"ping"}' for _ in range(pings))
    del one
    async with aiohttp.ClientSession() as http:  # warm: the first stream's costs paid
        ws = await http.ws_connect(gw.url.replace("http", "ws") + "/v1/stream")
        assert (await next_reply(ws))["type"] == "hello"
        await ws.send_bytes(face_jpeg)
        assert (await next_reply(ws))["type"] == "result"
        before = gw.rss_mb()
        reader, writer = await rawws.open_ws(gw.url)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(blob)
        sending = asyncio.create_task(writer.drain())
        served = 0
        while not sending.done():  # the legitimate client, meanwhile: each frame answered
            await ws.send_bytes(face_jpeg)
            reply = await next_reply(ws)
            assert reply["type"] in ("result", "dropped"), reply
            served += reply["type"] == "result"
        await ws.close()
    await sending  # every ping taken by the gateway's socket
    grown = gw.rss_mb() - before
    rawws.reset(writer)
    # each queued pong costs well over 100 bytes (the str, its tuple, the deque's slot)
    print(f"RSS grew {grown:.1f} MB")
    assert grown < pings * 100 / 2**20 / 4, f"RSS grew {grown:.0f} MB"
    assert served >= 1
