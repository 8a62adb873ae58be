"""Canary verdicts one client cannot steer (issue #23, point 7).

Guards against promoting a blind version (its scores biased to find nothing) because one
client sent frames in which neither version finds anything, each of which counted as full
agreement: 350 blank frames over one stream once promoted such a version in 4.7 s. And
against any verdict drawn from one client at all: a trial waits for `min_streams` streams of
`min_clients` client addresses over `min_seconds` before it decides either way."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import canary_models
from tests.conftest import running, settings_for
from tests.overload_util import blast
from tests.pace import deadline, wait_until
from tests.test_canary import FPS, _decided, canary_repo
from tests.test_models import add_version, models_rows
from tests.wsclient import Books, open_stream, read_into

pytestmark = pytest.mark.integration

#: canary frames before a verdict may be reached, and the time and spread it waits for
BUDGET = 30
MIN_SECONDS = 1.0
POLICY = f"share = 1.0\nframes = {BUDGET}\nmax_latency_ratio = 2.0\n"
MINIMUMS = f"min_streams = 3\nmin_clients = 2\nmin_seconds = {MIN_SECONDS}\n"


async def test_blank_frames_from_one_client_never_promote_a_blind_version(
    pulled: Path, tmp_path: Path, noface_jpeg: bytes
) -> None:
    """One stream sends frames with no face while a blind version 2 is on trial (share 1,
    50 frames, no minimums): the blank frames are not compared, so the trial cannot show
    agreement and version 2 is rolled back, never promoted."""
    repo = canary_repo(pulled, tmp_path / "repo")
    async with running(settings_for(repo)) as (url, _), aiohttp.ClientSession() as http:
        add_version(pulled, repo, "2", canary_models.blind(pulled))
        load = url + "/v1/models/blazeface/load"
        async with http.post(load, json={"canary": {"share": 1.0, "frames": 50}}) as r:
            assert r.status == 200
        ws, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(ws, books))
        sender = asyncio.create_task(blast(ws, books, noface_jpeg, 3600, FPS))
        try:
            row = await _decided(http, url, deadline(frames=200))
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
            await asyncio.wait_for(reader, deadline())
    assert row["state"] == "rolled_back", row
    assert row["canary"]["figures"]["compared"] == 0, row


async def _figures(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Version 2's row, its live figures under `figures`."""
    (row,) = [r for r in await models_rows(http, url) if str(r["version"]) == "2"]
    return {**row, "figures": row.get("canary", {}).get("figures", {})}


async def test_one_client_never_decides_a_trial_two_clients_over_time_do(
    pulled: Path, tmp_path: Path, face_jpeg: bytes
) -> None:
    """A sound version 2 on trial for every stream, with 3 streams of 2 clients over 1 s as
    the minimums. One stream of one client, then two, run well past the frame budget and
    the time: the trial stays open (no verdict on one client's frames, whatever they are).
    A stream from a second address (127.0.0.2) then brings the minimums, and it is
    decided: promoted, from 3 streams of 2 clients."""
    repo = canary_repo(pulled, tmp_path / "repo", POLICY, MINIMUMS)
    async with AsyncExitStack() as stack:
        url, _ = await stack.enter_async_context(running(settings_for(repo)))
        first = await stack.enter_async_context(_client("127.0.0.1"))
        second = await stack.enter_async_context(_client("127.0.0.2"))
        add_version(pulled, repo, "2")
        async with first.post(url + "/v1/models/blazeface/load") as r:
            assert r.status == 200
        streams = _Streams()
        stack.push_async_callback(streams.close)
        await streams.open(first, url, face_jpeg)
        row: dict[str, Any] = {}

        async def judged(frames: int, streams: int, seconds: float = 0.0) -> bool:
            row.update(await _figures(first, url))
            f = row["figures"]
            return row["state"] != "canary" or (
                f.get("frames", 0) >= frames
                and f.get("streams", 0) >= streams
                and f.get("seconds", 0) >= seconds
            )

        # one stream: past the budget twice over and past the time
        await wait_until(
            lambda: judged(2 * BUDGET, 1, MIN_SECONDS),
            MIN_SECONDS + deadline(frames=4 * BUDGET),
            lambda: row,
        )
        assert row["state"] == "canary" and row["figures"]["clients"] == 1, row
        # two streams of the same client
        await streams.open(first, url, face_jpeg)
        at = row["figures"]["frames"]
        await wait_until(
            lambda: judged(at + 2 * BUDGET, 2), deadline(frames=4 * BUDGET), lambda: row
        )
        assert row["state"] == "canary" and row["figures"]["clients"] == 1, row
        # a stream from a second client address
        await streams.open(second, url, face_jpeg)
        decided = await _decided(first, url, deadline(frames=4 * BUDGET, streams=3))
    assert decided["state"] == "promoted", decided
    assert "from 3 streams of 2 clients" in decided["reason"], decided
    assert streams.answered_twice() == []


def _client(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from `address` (a loopback address of its own)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


class _Streams:
    """Streams sending `face_jpeg` at FPS until closed."""

    def __init__(self) -> None:
        self._open: list[tuple[aiohttp.ClientWebSocketResponse, Books]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, http: aiohttp.ClientSession, url: str, data: bytes) -> None:
        ws, books = await open_stream(http, url)
        self._open.append((ws, books))
        self._tasks.append(asyncio.create_task(read_into(ws, books)))
        self._tasks.append(asyncio.create_task(blast(ws, books, data, 3600, FPS)))

    def answered_twice(self) -> list[int]:
        return [seq for _, books in self._open for seq in books.answered_twice()]

    async def close(self) -> None:
        for task in self._tasks[1::2]:  # the senders
            task.cancel()
        await asyncio.gather(*self._tasks[1::2], return_exceptions=True)
        for ws, _ in self._open:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks[0::2]), deadline())
