"""The batch size is measured: batches fill only as far as they pay on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from edge.core.services import SERVICES
from edge.inference import batching, engine, providers
from edge.inference.batching import BatchSizer
from edge.inference.decode import decode
from edge.inference.modelspec import ModelSpec, ModelSpecError
from edge.models.repository import Route
from tests.conftest import jpeg, running, settings_for
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, outpacing_fps, poll, wait_until
from tests.wsclient import next_reply, open_stream, read_into


def drive(sizer: BatchSizer, ms_per_frame: dict[int, float], gathers: int) -> list[int]:
    """Run `gathers` batches whose size is the limit asked for, costing `ms_per_frame` each
    (±5% noise); return the limits handed out."""
    rng = random.Random(7)
    limits = []
    for _ in range(gathers):
        n = sizer.limit()
        limits.append(n)
        sizer.record(n, ms_per_frame[n] * n / 1e3 * rng.uniform(0.95, 1.05))
    return limits


@pytest.mark.unit
def test_a_cpu_where_batches_cost_more_per_frame_settles_on_one() -> None:
    """The 2-core box here: PP-OCR at 640x480 costs about 27 ms a frame alone and 30 in pairs."""
    changes: list[tuple[int, int]] = []
    sizer = BatchSizer(2, on_change=lambda a, b, _: changes.append((a, b)))
    limits = drive(sizer, {1: 27.0, 2: 30.0}, 1000)
    assert sizer.best == 1 and changes == [(2, 1)]
    tail = limits[-800:]
    # the other size is still tried now and then, so a faster machine state would be seen
    assert tail.count(2) == pytest.approx(len(tail) / batching.PROBE_EVERY, abs=2)
    assert sizer.costs()[1] == pytest.approx(27.0, rel=0.05)


@pytest.mark.unit
def test_a_gpu_where_batches_pay_fills_them() -> None:
    sizer = BatchSizer(8)
    limits = drive(sizer, {1: 4.0, 2: 2.2, 4: 1.3, 8: 0.9}, 1000)
    assert sizer.candidates == [1, 2, 4, 8]
    assert sizer.best == 8
    assert limits[-800:].count(8) > 700


@pytest.mark.unit
def test_the_choice_follows_the_machine_when_it_changes() -> None:
    sizer = BatchSizer(4)
    drive(sizer, {1: 10.0, 2: 8.0, 4: 6.0}, 600)
    assert sizer.best == 4
    drive(sizer, {1: 10.0, 2: 12.0, 4: 14.0}, 3000)  # e.g. a GPU model moved to the CPU
    assert sizer.best == 1


@pytest.mark.unit
def test_sizes_too_few_streams_fill_stop_being_explored() -> None:
    """Two streams never fill a batch of 8: exploring ends and the best measured size wins."""
    sizer = BatchSizer(8)
    rng = random.Random(3)
    for _ in range(2000):
        n = min(sizer.limit(), 2)
        sizer.record(n, {1: 5.0, 2: 3.0}[n] * n / 1e3 * rng.uniform(0.95, 1.05))
    assert sizer.best == 2


@pytest.mark.unit
def test_batching_max_always_fills_and_is_validated() -> None:
    sizer = BatchSizer(4, measured=False)
    assert set(drive(sizer, {4: 50.0}, 100)) == {4}
    spec = ModelSpec.from_dict("m", {"task": "classification", "input": [8, 8]})
    assert spec.batching == "measured"
    with pytest.raises(ModelSpecError, match="batching"):
        ModelSpec.from_dict("m", {"task": "classification", "input": [8, 8], "batching": "x"})


#: the floods below outpace the model on purpose; the frame-rate limits stay out of it
UNLIMITED = {"max_fps_per_stream": 0, "max_fps_per_client": 0}


async def flood(
    http: aiohttp.ClientSession,
    url: str,
    streams: int,
    data: bytes,
    seconds: float,
    fps: float,
    enough: Callable[[], Awaitable[bool]] | None = None,
    enough_frames: int = 0,
) -> None:
    """`streams` streams of the text model each sending `data` at `fps` for `seconds`, and on
    until each has had a result and `enough()` holds (allowed: `enough_frames` frames more at
    the text model's cost measured here); then every frame of every stream must be answered
    exactly once. Once the streams stop, each has at most a frame running and one waiting:
    the wait for the last answers is sized from that work."""
    opened = [await open_stream(http, url, "ppocr_det") for _ in range(streams)]
    readers = [asyncio.create_task(read_into(ws, books)) for ws, books in opened]
    senders = [asyncio.create_task(blast(ws, b, data, 3600, fps)) for ws, b in opened]
    said = [False]

    async def done() -> bool:
        said[0] = enough is None or await enough()
        return said[0] and all(b.kinds().get("result", 0) > 0 for _, b in opened)

    try:
        await asyncio.sleep(seconds)
        await wait_until(
            done,
            deadline(frames=enough_frames + streams, model="ppocr_det"),
            lambda: f"enough: {said[0]}; replies {[b.kinds() for _, b in opened]}",
        )
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await wait_until(
            lambda: all(not books.unanswered() for _, books in opened),
            deadline(frames=2, streams=streams, model="ppocr_det"),
            lambda: {i: books.unanswered() for i, (_, books) in enumerate(opened)},
        )
        for ws, _ in opened:
            await ws.close()
    finally:
        for t in [*senders, *readers]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    for _, books in opened:
        assert not books.unanswered() and not books.answered_twice()
        assert books.kinds().get("result", 0) > 0


@pytest.mark.integration
async def test_text_model_under_load_forms_batches_and_publishes_its_limit(
    text_repo: Path,
) -> None:
    """Four streams flooding the text model: batches of two form (the histogram shows them),
    every frame is answered once, and `edge_batch_limit` shows the size the gateway measured
    fastest, which is what it then runs most. The flood lasts until both sizes have run often
    enough to be trusted and the workers have gathered since (on a slow machine, longer)."""
    page = jpeg("page.png", (640, 480))
    workers = 2
    settings = settings_for(text_repo, default_model="ppocr_det", workers=workers, **UNLIMITED)
    async with running(settings) as (url, app), aiohttp.ClientSession() as http:
        model = app[SERVICES].repo.resolve(Route("ppocr_det"))
        trusted_at: list[float] = []  # batches run when both sizes had enough

        async def explored() -> bool:
            m = await scrape(http, url)
            runs = total(m, "edge_batch_size_count", model="ppocr_det")
            singles = total(m, "edge_batch_size_bucket", model="ppocr_det", le="1.0")
            if not trusted_at:
                if min(singles, runs - singles) >= batching.MIN_SAMPLES:
                    trusted_at.append(runs)
                return False
            return runs > trusted_at[0] + workers  # a gather that began after: it chose

        fps = max(12.0, outpacing_fps(4, "ppocr_det", workers))
        await flood(http, url, 4, page, 8.0, fps, explored, 4 * batching.MIN_SAMPLES)
        m = await scrape(http, url)
    runs = total(m, "edge_batch_size_count", model="ppocr_det")
    singles = total(m, "edge_batch_size_bucket", model="ppocr_det", le="1.0")
    assert runs > 0 and runs - singles > 0, "no batch larger than one formed"
    limit = total(m, "edge_batch_limit", model="ppocr_det")
    assert limit == model.sizer.best and limit in (1, 2)
    costs = model.sizer.costs()
    assert set(costs) == {1, 2}
    assert costs[int(limit)] == min(costs.values())


@pytest.mark.integration
def test_a_gpu_layout_runs_one_input_shape_on_its_own_threads(
    pulled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU (faked here: the layout is chosen as if CUDA came first; the sessions are the
    real CPU ones) every batch reaches the session padded to max_batch rows, on the session's
    own thread, and the caller gets back only its own rows, equal to an unpadded run."""
    monkeypatch.setattr(providers, "gpu_first", lambda prefs: True)
    spec = ModelSpec.load(pulled / "ppocr_det")
    model = engine.load(pulled, spec, pulled / "ppocr_det" / "1", workers=4, preference=("cpu",))
    assert model.layout.dedicated and model.layout.sessions == 2
    assert not model.sizer.measured and model.batch_shapes == [spec.max_batch] == [2]
    seen: list[tuple[tuple[int, ...], str]] = []

    class Recording:
        def __init__(self, session: Any) -> None:
            self.session = session

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> Any:
            (x,) = feed.values()
            seen.append((x.shape, threading.current_thread().name))
            return self.session.run(names, feed)

    plain = model.sessions[0]
    model.sessions[:] = [Recording(s) for s in model.sessions]
    image = decode(jpeg("page.png"), model.task.decode_hint(), 1 << 30)
    x, _ = model.task.preprocess(image)
    one = model.run(x[None], 0)
    two = model.run(np.stack([x, x]), 1)
    assert [s[0][0] for s in seen] == [2, 2]
    threads = [name.rsplit("_", 1)[0] for _, name in seen]
    assert threads == ["edge-ppocr_det-session0", "edge-ppocr_det-session1"]
    assert one[0].shape[0] == 1 and two[0].shape[0] == 2
    alone = plain.run(model.output_names, {model.input_name: x[None]})
    np.testing.assert_allclose(one[0][0], alone[0][0], atol=1e-4)
    np.testing.assert_allclose(two[0][1], alone[0][0], atol=1e-4)
    model.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("edge-ppocr_det-session")]


@pytest.mark.integration
def test_a_gpu_layout_hands_each_batch_to_the_least_busy_session(
    pulled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers 0 and 2 would share session 0 by number; while session 0 is busy with worker
    0's batch, worker 2's goes to the idle session 1 instead of queueing behind it."""
    monkeypatch.setattr(providers, "gpu_first", lambda prefs: True)
    spec = ModelSpec.load(pulled / "ppocr_det")
    model = engine.load(pulled, spec, pulled / "ppocr_det" / "1", workers=4, preference=("cpu",))
    seen: list[str] = []
    started, release = threading.Event(), threading.Event()

    class Held:
        def __init__(self, session: Any) -> None:
            self.session = session

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> Any:
            seen.append(threading.current_thread().name.rsplit("_", 1)[0])
            started.set()
            release.wait(within)
            return self.session.run(names, feed)

    within = deadline(frames=2, model="ppocr_det")
    model.sessions[:] = [Held(s) for s in model.sessions]
    x, _ = model.task.preprocess(decode(jpeg("page.png"), model.task.decode_hint(), 1 << 30))
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(model.run, x[None], 0)
            assert started.wait(within), "worker 0's batch never reached a session"
            second = pool.submit(model.run, x[None], 2)
            poll(lambda: len(seen) == 2, deadline(), f"worker 2's batch to reach a session: {seen}")
            release.set()
            first.result(within), second.result(within)
    finally:
        release.set()
        model.close()
    assert sorted(seen) == ["edge-ppocr_det-session0", "edge-ppocr_det-session1"]


@pytest.mark.integration
async def test_the_gateway_with_a_gpu_layout_answers_and_stops_its_session_threads(
    text_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU layout through the real server (faked GPU, real CPU sessions): two streams get
    their text boxes from padded batches, and shutdown leaves no session thread behind."""
    monkeypatch.setattr(providers, "gpu_first", lambda prefs: True)
    page = jpeg("page.png")
    async with (
        running(settings_for(text_repo, default_model="ppocr_det", workers=2)) as (url, app),
        aiohttp.ClientSession() as http,
    ):
        assert app[SERVICES].repo.resolve(Route("ppocr_det")).layout.dedicated
        streams = [await open_stream(http, url, "ppocr_det") for _ in range(2)]
        await asyncio.gather(*(ws.send_bytes(page) for ws, _ in streams))
        for ws, _ in streams:
            reply = await next_reply(ws, deadline(frames=2, model="ppocr_det"))
            assert reply["type"] == "result" and len(reply["detections"]) >= 5, reply
            await ws.close()
        assert [t for t in threading.enumerate() if t.name.startswith("edge-ppocr_det-session")]
    assert not [t for t in threading.enumerate() if t.name.startswith("edge-ppocr_det-session")]


@pytest.mark.integration
async def test_on_a_gpu_the_workers_hold_two_batches_per_session(
    text_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight workers and sixteen streams flooding the text model on the GPU layout (faked GPU,
    real CPU sessions): the workers hold at most two batches per session (`edge_inflight_frames`
    stays within 2 sessions x 2 batches x 2 frames, but for samples that catch the gauge a
    moment late), not one batch each, so ready streams gather into full batches; every frame
    is still answered once."""
    monkeypatch.setattr(providers, "gpu_first", lambda prefs: True)
    page = jpeg("page.png", (640, 480))
    settings = settings_for(text_repo, default_model="ppocr_det", workers=8, **UNLIMITED)
    async with running(settings) as (url, app), aiohttp.ClientSession() as http:
        model = app[SERVICES].repo.resolve(Route("ppocr_det"))
        assert model.layout.max_batches == 4 and model.spec.max_batch == 2
        fps = max(6.0, outpacing_fps(16, "ppocr_det", 2))  # two sessions, on the cores here
        held: list[float] = []
        batches = [0.0]

        async def watch() -> None:
            while True:
                m = await scrape(http, url)
                held.append(total(m, "edge_inflight_frames"))
                batches[0] = total(m, "edge_batch_size_count", model="ppocr_det")
                await asyncio.sleep(0.05)

        async def enough() -> bool:  # seen often enough, over enough batches
            return len(held) > 20 and batches[0] > 10

        watcher = asyncio.create_task(watch())
        try:
            await flood(http, url, 16, page, 5.0, fps, enough, enough_frames=2 * 11)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        m = await scrape(http, url)
    # A worker lowers the gauge just after leaving the scheduler's lock, so a sample on a busy
    # machine can catch a finished batch still counted while its slot's next batch already
    # is: at most one batch (2 frames) per session more, now and then. One batch per worker
    # would hold 8 x 2 frames most of the time.
    usual = sorted(held)[int(0.9 * len(held))]
    assert len(held) > 20 and 0 < usual <= 8 and max(held) <= 8 + 2 * 2, held
    runs = total(m, "edge_batch_size_count", model="ppocr_det")
    frames = total(m, "edge_batch_size_sum", model="ppocr_det")
    assert runs > 10 and frames / runs > 1.8, f"{frames} frames in {runs} batches"
    # the session call is timed on the session's own thread: once per batch, inside the run
    assert total(m, "edge_stage_seconds_count", model="ppocr_det", stage="session") == runs
    assert (
        0
        < total(m, "edge_stage_seconds_sum", model="ppocr_det", stage="session")
        <= total(m, "edge_inference_latency_seconds_sum", model="ppocr_det")
    )


@pytest.mark.unit
def test_layouts_on_a_gpu_are_one_shape_per_session_even_when_set_by_hand() -> None:
    spec = ModelSpec.from_dict("m", {"task": "classification", "input": [8, 8], "max_batch": 4})
    assert engine.choose_layout(spec, 16, gpu=True) == engine.Layout(
        2, 1, "auto on a GPU: two sessions the workers share", dedicated=True
    )
    assert engine.choose_layout(spec, 2) == engine.Layout(
        2, 1, "auto: one single-threaded session per worker"
    )
    by_hand = ModelSpec.from_dict(
        "m", {"task": "classification", "input": [8, 8], "sessions": 1, "threads": 4}
    )
    assert engine.choose_layout(by_hand, 16, gpu=True).dedicated
    assert not engine.choose_layout(by_hand, 16).dedicated
