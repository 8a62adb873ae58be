"""Track IDs: the tracker on hand-made boxes (association, prediction over dropped frames,
expiry, ByteTrack's weak detections), then faces moving across a clip made here through
`/v1/stream` of a tracked copy of BlazeFace, paced and overloaded, leaving and coming back,
and two faces crossing."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from edge.inference.modelspec import ModelSpec, ModelSpecError
from edge.inference.tracking import Tracker, TrackingSpec
from tests.conftest import TRACKED_LOST_AFTER, running, settings_for
from tests.imagedata import load_rgb
from tests.pace import deadline, frame_cost, wait_until
from tests.wsclient import Books, next_reply, open_stream, read_into

LOST_AFTER = TRACKED_LOST_AFTER  # frames
W, H = 640, 360
STEP = 4  # pixels a face moves each frame


def boxes(*xs: float, y: float = 100, size: float = 90) -> np.ndarray:
    return np.array([[x, y, x + size, y + size] for x in xs], dtype=np.float64).reshape(-1, 4)


def ids(tracker: Tracker, b: np.ndarray, t: int, scores: list[float] | None = None) -> list:
    s = np.array(scores if scores is not None else [0.9] * len(b))
    return tracker.update(b, s, 0.5, t).ids


@pytest.mark.unit
def test_keeps_ids_of_boxes_that_move() -> None:
    """Guards against IDs changing from frame to frame, or two objects swapping IDs."""
    tracker = Tracker(TrackingSpec(enabled=True))
    first = ids(tracker, boxes(0, 300), 0)
    assert first == [1, 2]
    for t in range(1, 20):
        assert ids(tracker, boxes(300 - 5 * t, 5 * t), t) == [2, 1]  # listed in another order


@pytest.mark.unit
def test_predicts_motion_over_dropped_frames() -> None:
    """Guards against a gap in the sequence (frames dropped under load) breaking a track:
    after the gap the box is far from where it was last seen, but where its motion says."""
    tracker = Tracker(TrackingSpec(enabled=True, iou=0.3))
    for t in range(3):
        assert ids(tracker, boxes(40 * t), t) == [1]
    assert ids(tracker, boxes(40 * 5), 5) == [1]  # 80 px beyond the last box: no overlap
    update = tracker.update(boxes(40 * 9), np.array([0.9]), 0.5, 9)
    assert (update.ids, update.started, update.ended) == ([1], 0, 0)


@pytest.mark.unit
def test_ends_tracks_after_the_absence() -> None:
    """Guards against a track living forever, or ending before its absence is over, or
    ending when the frames it was absent from were dropped rather than looked at."""
    tracker = Tracker(TrackingSpec(enabled=True, lost_after_frames=5))
    assert ids(tracker, boxes(10), 0) == [1]
    assert ids(tracker, boxes(10), 5) == [1]  # unseen for 4 frames: still the same
    assert ids(tracker, boxes(10), 20) == [1]  # 14 frames dropped, none looked at: the same
    assert ids(tracker, boxes(10)[:0], 22) == []  # looked for, missed
    update = tracker.update(boxes(10), np.array([0.9]), 0.5, 26)  # unseen for 5 frames
    assert (update.ids, update.started, update.ended) == ([2], 1, 1)
    update = tracker.update(boxes(10)[:0], np.array([]), 0.5, 40)  # missed after 14 frames
    assert (update.ids, update.started, update.ended) == ([], 0, 1)


@pytest.mark.unit
def test_weak_detections_only_continue_tracks() -> None:
    """Guards against ByteTrack's second pass starting tracks from weak detections, or
    dropping a track through one weak frame."""
    tracker = Tracker(TrackingSpec(enabled=True, low=0.2))
    assert ids(tracker, boxes(10), 0) == [1]
    assert ids(tracker, boxes(12, 400), 1, [0.3, 0.3]) == [1, None]
    assert ids(tracker, boxes(14, 400), 2, [0.1, 0.9]) == [None, 2]  # under low: not seen


@pytest.mark.unit
def test_weak_detections_do_not_steer_the_motion() -> None:
    """Guards against a weak detection, often a displaced box (a face half hidden is found
    taller and higher), changing a track's measured motion: the next predictions would
    drift off the object and its next strong detection would start a new ID
    (bench/tracking.py, the occluded clip)."""
    tracker = Tracker(TrackingSpec(enabled=True, low=0.2))
    for t in range(3):
        assert ids(tracker, boxes(10 * t), t) == [1]
    assert ids(tracker, boxes(40, y=130), 3, [0.3]) == [1]  # weak, 30 px off, kept on
    (track,) = tracker.tracks
    assert track.velocity.tolist() == [10.0, 0.0, 10.0, 0.0]  # what strong boxes measured
    assert track.predicted(4).tolist() == [50.0, 130.0, 140.0, 220.0]  # from where it was


@pytest.mark.unit
def test_model_toml_tracking_table() -> None:
    """Guards against a bad [tracking] table being taken silently."""
    base = {"task": "blazeface", "input": [128, 128]}
    assert not ModelSpec.from_dict("m", base).tracking.enabled
    spec = ModelSpec.from_dict("m", {**base, "tracking": {"lost_after_frames": 9}})
    assert spec.tracking == TrackingSpec(enabled=True, lost_after_frames=9)
    for bad in ({"lost_after_frames": 0}, {"iou": 2}, {"enabled": "yes"}, {"max_age": 3}):
        with pytest.raises(ModelSpecError, match="tracking"):
            ModelSpec.from_dict("m", {**base, "tracking": bad})


# -- through the gateway ---------------------------------------------------------------------


@pytest.fixture
async def tracked_server(tracked_repo: Path) -> AsyncIterator[str]:
    async with running(settings_for(tracked_repo)) as (url, _):
        yield url


def face() -> np.ndarray:
    return load_rgb("astronaut.png")[40:220, 140:300]


def frame(*places: tuple[int, int]) -> bytes:
    """A JPEG of a plain background with the face pasted at each (x, y)."""
    canvas = np.full((H, W, 3), 128, np.uint8)
    f = face()
    for x, y in places:
        canvas[y : y + f.shape[0], x : x + f.shape[1]] = f
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def run_clip(url: str, clip: list[bytes], interval: float | None) -> Books:
    """Send `clip` to a stream of `faces`: each frame after the previous one's reply
    (`interval` None), or one every `interval` seconds regardless; every reply, by seq."""
    async with aiohttp.ClientSession() as http:
        ws, books = await open_stream(http, url, "faces")
        if interval is None:
            for seq, data in enumerate(clip):
                await ws.send_bytes(data)
                books.sent_at[seq] = 0.0
                books.record(await next_reply(ws))
        else:
            reader = asyncio.create_task(read_into(ws, books))
            try:
                for seq, data in enumerate(clip):
                    await ws.send_bytes(data)
                    books.sent_at[seq] = 0.0
                    await asyncio.sleep(interval)
                await wait_until(
                    lambda: not books.unanswered(), deadline(len(clip)), books.unanswered
                )
            finally:
                reader.cancel()
        await ws.close()
    return books


def detections(books: Books) -> dict[int, list[dict[str, Any]]]:
    return {
        seq: msgs[0]["detections"]
        for seq, msgs in sorted(books.replies.items())
        if msgs[0]["type"] == "result"
    }


def sweep(frames: int) -> list[bytes]:
    return [frame((20 + STEP * i, 90)) for i in range(frames)]


async def test_one_id_for_a_face_across_the_clip(tracked_server: str) -> None:
    """Guards against a face getting a new ID on some frames while it stays in view."""
    books = await run_clip(tracked_server, sweep(40), None)
    seen = detections(books)
    found = [d for dets in seen.values() for d in dets]
    assert len(found) >= 0.8 * len(seen), seen
    assert {d["track_id"] for d in found} == {1}, seen


async def test_one_id_when_frames_are_dropped(tracked_server: str) -> None:
    """Guards against frames dropped under load (latest-frame-wins) breaking the track: the
    stream is sent faster than it is served, and the face moves on in the frames dropped."""
    clip = sweep(60)
    # built before sending, so the sender outpaces the server
    books = await run_clip(tracked_server, clip, frame_cost() / 3)
    kinds = books.kinds()
    assert kinds.get("dropped:stale", 0) > 0, kinds
    found = [d for dets in detections(books).values() for d in dets]
    assert found, kinds
    assert {d["track_id"] for d in found} == {1}, detections(books)


async def test_new_id_after_the_absence(tracked_server: str) -> None:
    """Guards against a face that left for longer than lost_after_frames keeping its old ID,
    or one back sooner getting a new one."""
    here, away = frame((200, 90)), frame()
    clip = [here] * 3 + [away] * (LOST_AFTER - 2) + [here] * 3 + [away] * (LOST_AFTER + 2)
    books = await run_clip(tracked_server, [*clip, here, here], None)
    got = [[d["track_id"] for d in dets] for dets in detections(books).values()]
    want = [[1]] * 3 + [[]] * (LOST_AFTER - 2) + [[1]] * 3 + [[]] * (LOST_AFTER + 2) + [[2]] * 2
    assert got == want, got


async def test_two_faces_crossing_keep_their_ids(tracked_server: str) -> None:
    """Guards against two faces swapping IDs as they pass each other."""
    n = 60
    clip = [frame((20 + 7 * i, 20), (440 - 7 * i, 160)) for i in range(n)]
    books = await run_clip(tracked_server, clip, None)
    left_to_right: set[int] = set()
    right_to_left: set[int] = set()
    both = 0
    for dets in detections(books).values():
        both += len(dets) == 2
        for d in dets:
            (left_to_right if d["box"][1] < 140 else right_to_left).add(d["track_id"])
    assert both >= 0.8 * n, detections(books)
    assert len(left_to_right) == len(right_to_left) == 1, detections(books)
    assert left_to_right != right_to_left


async def test_metrics_count_tracks(tracked_server: str) -> None:
    """Guards against the track metrics not moving: one track started, active while its
    stream is open, ended when it closes."""
    await run_clip(tracked_server, [frame((200, 90))] * 3, None)
    async with aiohttp.ClientSession() as http:

        async def sample(name: str) -> float:
            async with http.get(tracked_server + "/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith(name + '{model="faces"}'):
                    return float(line.split()[-1])
            return 0.0

        async def settled() -> bool:
            return await sample("edge_tracks_ended_total") == 1.0

        await wait_until(settled, deadline(), "edge_tracks_ended_total == 1")
        assert await sample("edge_tracks_started_total") == 1.0
        assert await sample("edge_tracks_active") == 0.0
