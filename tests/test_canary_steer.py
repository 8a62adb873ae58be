"""A canary verdict one client cannot steer with blank frames (issue #23, point 7).

Guards against promoting a blind version (its scores biased to find nothing) because one
client sent frames in which neither version finds anything, each of which counted as full
agreement: 350 blank frames over one stream once promoted such a version in 4.7 s."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests import canary_models
from tests.conftest import running, settings_for
from tests.overload_util import blast
from tests.pace import deadline
from tests.test_canary import FPS, _decided
from tests.test_models import add_version, face_repo_copy
from tests.wsclient import open_stream, read_into

pytestmark = pytest.mark.integration


async def test_blank_frames_from_one_client_never_promote_a_blind_version(
    pulled: Path, tmp_path: Path, noface_jpeg: bytes
) -> None:
    """One stream sends frames with no face while a blind version 2 is on trial (share 1,
    50 frames): the blank frames are not compared, so the trial cannot show agreement and
    version 2 is rolled back, never promoted."""
    repo = face_repo_copy(pulled, tmp_path / "repo")
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
