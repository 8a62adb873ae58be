"""Limits on one client (docs/security.md): frame rates, streams per token, oversize frames."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from edge import sharedmem
from edge.access.ratelimit import StreamQuota, TokenBucket, allow_frame
from edge.compat import timeout
from edge.core.outbox import Outbox
from edge.core.stream import Stream
from edge.models.repository import Route
from edge.settings import Settings
from tests.conftest import jpeg, running, settings_for
from tests.operations_util import scrape, total
from tests.pace import deadline
from tests.wsclient import Books, next_reply, open_stream

TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"


@pytest.fixture(scope="module")
def small_jpeg() -> bytes:
    return jpeg("astronaut.png", (96, 96))


async def send_all(ws: aiohttp.ClientWebSocketResponse, books: Books, frame: bytes, n: int) -> None:
    for _ in range(n):
        books.sent_at[len(books.sent_at)] = 0.0
        await ws.send_bytes(frame)


async def read_answers(ws: aiohttp.ClientWebSocketResponse, books: Books) -> None:
    """Read until every frame sent has its reply, allowing each outstanding frame its cost."""
    within = deadline(frames=len(books.unanswered()))
    try:
        async with timeout(within):
            while books.unanswered():
                books.record(await next_reply(ws))
    except asyncio.TimeoutError:
        raise AssertionError(f"after {within:.1f} s no reply to {books.unanswered()}") from None


# -- frame rates -------------------------------------------------------------------------------
@pytest.mark.integration
async def test_frames_over_the_stream_rate_are_dropped_and_the_stream_goes_on(
    face_repo: Path, small_jpeg: bytes
) -> None:
    """A client sending faster than max_fps_per_stream gets `rate_limited` drop notices (one
    reply per frame, as always), is counted, and is served again once it slows down."""
    settings = settings_for(face_repo, max_fps_per_stream=2)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        ws, books = await open_stream(http, url)
        await send_all(ws, books, small_jpeg, 30)  # 2 a second allowed, at most 2 saved up
        await read_answers(ws, books)
        kinds = books.kinds()
        assert kinds.get("dropped:rate_limited", 0) >= 10, kinds
        assert set(kinds) <= {"result", "dropped:stale", "dropped:rate_limited"}, kinds
        assert books.answered_twice() == []
        await asyncio.sleep(1.1)  # two tokens again
        await send_all(ws, books, small_jpeg, 1)
        await read_answers(ws, books)
        assert books.replies[30][0]["type"] == "result", books.replies[30]
        metrics = await scrape(http, url)
        await ws.close()
    limited = kinds["dropped:rate_limited"]
    assert total(metrics, "edge_frames_dropped_total", reason="rate_limited") == limited
    assert total(metrics, "edge_frames_rate_limited_total", limit="stream") == limited


@pytest.mark.integration
async def test_frames_over_the_client_rate_are_dropped_across_its_streams(
    face_repo: Path, small_jpeg: bytes
) -> None:
    """Opening more streams does not buy a client more frames than max_fps_per_client."""
    settings = settings_for(face_repo, max_fps_per_stream=0, max_fps_per_client=2)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        clients = [await open_stream(http, url) for _ in range(2)]
        for ws, books in clients:
            await send_all(ws, books, small_jpeg, 15)
        for ws, books in clients:
            await read_answers(ws, books)
        metrics = await scrape(http, url)
        for ws, _ in clients:
            await ws.close()
    limited = sum(b.kinds().get("dropped:rate_limited", 0) for _, b in clients)
    assert limited >= 10, [b.kinds() for _, b in clients]
    assert total(metrics, "edge_frames_rate_limited_total", limit="client") == limited


@pytest.mark.unit
def test_token_bucket_allows_the_rate_and_a_burst() -> None:
    bucket = TokenBucket(10, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(30)) == 10  # a second's worth saved up
    assert not bucket.take(0.05)
    assert bucket.take(0.1)  # one token per 1/10 s
    assert sum(bucket.take(10.0) for _ in range(30)) == 10  # never more than the burst
    passed = sum(bucket.take(10.0 + i / 20) for i in range(1, 41))  # 20 a second for 2 s
    assert 19 <= passed <= 20  # about half pass (float rounding aside)


@pytest.mark.unit
def test_a_flooding_stream_does_not_spend_its_siblings_budget() -> None:
    """Limits nest: frames refused by their stream's rate do not count against the client."""

    async def send(_text: str) -> None:
        pass

    settings = Settings(max_fps_per_stream=5, max_fps_per_client=8)
    outbox = Outbox(send, max_pending=1, send_timeout=1.0)
    streams = [Stream(f"s{i}", "test", Route("m"), outbox) for i in range(2)]
    flood = [allow_frame(settings, streams[0], 0.0) for _ in range(50)]
    assert flood.count(None) == 5 and flood.count("stream") == 45
    # No request context: the client limit needs one (the middleware sets it), so only the
    # stream limit applies here.
    assert [allow_frame(settings, streams[1], 0.0) for _ in range(5)] == [None] * 5


@pytest.mark.unit
def test_a_clients_budget_outlives_its_requests() -> None:
    """Guards against a client's budget forgotten whenever it holds no stream: requests one
    after another (each counted as a holder, one token, released) each started with a fresh
    burst, so a client sending unary requests was never limited. Its row (and bucket) stays
    while nobody holds it, until a new key needs the room."""
    clock = [100.0]
    shared = sharedmem.Shared(1, 64)
    key, rate = "client:10.0.0.9", 20.0

    def request() -> bool:
        assert shared.acquire(key, 0)
        try:
            return shared.take_token(key, rate, clock[0]) is True
        finally:
            shared.release(key)

    assert sum(request() for _ in range(40)) == rate  # one second's burst, not 40
    clock[0] += 0.5
    assert sum(request() for _ in range(40)) == rate / 2  # refilled at the rate
    clock[0] += 1.0  # untouched for a second: full again
    shared.acquire(key, 0)
    shared.release(key)
    assert shared.count(key) == 0 and sum(request() for _ in range(40)) == rate


@pytest.mark.unit
def test_stream_quota_counts_per_identity_and_releases_once() -> None:
    quota = StreamQuota(2)
    a1, a2 = quota.acquire("a"), quota.acquire("a")
    assert a1 and a2 and quota.acquire("a") is None and quota.acquire("b") is not None
    a1.release()
    a1.release()  # idempotent: must not free a slot it does not hold
    assert quota.open("a") == 1
    assert quota.acquire("a") is not None and quota.acquire("a") is None
    assert StreamQuota(0).acquire("x") is not None  # 0: no limit


# -- streams per token -------------------------------------------------------------------------
@pytest.mark.integration
async def test_streams_per_token_are_limited_with_429(face_repo: Path) -> None:
    """One token (one leaked token, one runaway device) cannot take every stream."""
    settings = settings_for(face_repo, auth_tokens=(TOKEN_A, TOKEN_B), max_streams_per_token=2)
    a = {"Authorization": f"Bearer {TOKEN_A}"}
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        held = [await open_stream(http, url, headers=a) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(url.replace("http", "ws") + "/v1/stream", headers=a)
        assert e.value.status == 429 and e.value.headers and "Retry-After" in e.value.headers
        async with http.post(url + "/v1/webrtc/offer", json={}, headers=a) as r:
            assert r.status == 429 and (await r.json())["error"] == "too_many_streams"
        other, _ = await open_stream(http, url, headers={"Authorization": f"Bearer {TOKEN_B}"})
        # An auth message over the quota is refused after the upgrade: error, then 1008.
        ws = await http.ws_connect(url.replace("http", "ws") + "/v1/stream", protocols=("edge.v1",))
        await ws.send_str(json.dumps({"type": "auth", "token": TOKEN_A}))
        assert (await next_reply(ws))["code"] == "too_many_streams"
        assert (await asyncio.wait_for(ws.receive(), deadline())).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        await held[0][0].close()  # the slot comes back when the stream ends
        again, _ = await open_stream(http, url, headers=a)
        for s in (held[1][0], other, again):
            await s.close()


# -- oversize frames ---------------------------------------------------------------------------
@pytest.mark.integration
async def test_oversize_frames_close_with_1009_only_when_repeated(
    face_repo: Path, small_jpeg: bytes
) -> None:
    """One frame over max_frame_bytes is a mistake answered with bad_frame; a client that
    keeps sending them is closed with 1009 instead of being answered for ever."""
    big = small_jpeg + b"\x00" * 20_000
    settings = settings_for(face_repo, max_frame_bytes=20_000, max_oversize_frames=3)
    async with running(settings) as (url, _), aiohttp.ClientSession() as http:
        ws, _ = await open_stream(http, url)
        for frame in (big, small_jpeg, big, big, small_jpeg, big, big, small_jpeg):
            await ws.send_bytes(frame)
            r = await next_reply(ws)
            expected = ("error", "bad_frame") if frame is big else ("result", None)
            assert (r["type"], r.get("code")) == expected, r
        for _ in range(3):
            await ws.send_bytes(big)
            assert (await next_reply(ws))["code"] == "bad_frame"
        msg = await asyncio.wait_for(ws.receive(), deadline())
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1009
