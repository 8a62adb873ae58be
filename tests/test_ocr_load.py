"""A model with stages under load (#24): several streams of text frames, sent faster than the
gateway can read them, on the real server. The stream rules hold as for a one-stage model
(every frame answered once, the frames a newer one replaced dropped `stale`), each result
carries what its lines read, and the later stages' batches are in `/metrics`
(`edge_stage_batch_size`, by task): every line read once, in batches of up to the stage's
`max_batch` (6 in models/ocr/model.toml), several lines to a batch.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import running, settings_for
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, frame_cost, outpacing_fps, wait_until
from tests.test_kserve import NO_RATE_LIMITS
from tests.test_ocr import render
from tests.wsclient import Books, open_stream, read_into

pytestmark = pytest.mark.integration

#: eight lines a frame: more than one stage batch (max_batch 6) per frame
LINES = [(f"line {n} of text", 22) for n in range(1, 9)]
STREAMS = 4
#: results each stream must get before the senders stop
RESULTS_EACH = 2


async def overload(
    repo: Path, page: bytes, lines: int
) -> tuple[list[Books], dict[tuple[str, tuple], float]]:
    """STREAMS streams of `page` (`lines` lines) sent faster than the gateway serving `repo`
    reads them, until each got RESULTS_EACH results and every frame sent was answered: each
    stream's books and /metrics at the end."""
    # one OCR frame of eight lines, as tests/test_ocr.py allows one of three, times two
    per_frame = 2 * (20 * frame_cost("ppocr_det")) * max(1.0, lines / 8)
    fps = max(50.0, outpacing_fps(STREAMS, model="ppocr_det"))
    async with (
        running(settings_for(repo, **NO_RATE_LIMITS)) as (url, _),
        aiohttp.ClientSession() as http,
    ):
        clients = [await open_stream(http, url, "ocr") for _ in range(STREAMS)]
        readers = [asyncio.create_task(read_into(ws, b)) for ws, b in clients]
        senders = [asyncio.create_task(blast(ws, b, page, 3600, fps)) for ws, b in clients]

        def results(books: Books) -> int:
            return books.kinds().get("result", 0)

        await wait_until(
            lambda: all(results(b) >= RESULTS_EACH for _, b in clients),
            deadline() + STREAMS * RESULTS_EACH * 2 * per_frame,
            lambda: [b.kinds() for _, b in clients],
        )
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await wait_until(
            lambda: all(not b.unanswered() for _, b in clients),
            deadline() + STREAMS * per_frame,  # at most one frame a stream still waits
            lambda: [b.unanswered() for _, b in clients],
        )
        samples = await scrape(http, url)
        for ws, _ in clients:
            await ws.close()
        await asyncio.wait_for(asyncio.gather(*readers), deadline())
    return [b for _, b in clients], samples


def lines_read(every: list[Books], lines: list[tuple[str, int]]) -> int:
    """The lines of every result, each checked: all the page's lines, each read as one;
    every frame answered once, and some dropped stale."""
    read = 0
    for books in every:
        assert books.unanswered() == [] and books.answered_twice() == [], books.kinds()
        assert books.kinds().get("dropped:stale", 0) > 0, books.kinds()
        for msgs in books.replies.values():
            if msgs[0]["type"] == "result":
                dets = msgs[0]["detections"]
                assert len(dets) == len(lines), dets
                assert all(d["text"].startswith("line ") for d in dets), dets
                read += len(dets)
    return read


async def test_stage_batches_under_overload(pulled: Path, tmp_path: Path) -> None:
    """Guards against stages breaking the stream rules under load (a frame answered twice or
    never, a queue instead of latest-frame-wins) and against stage batches nobody can see:
    each stage's batch sizes must be in /metrics, adding up to the lines read."""
    shutil.copytree(pulled / "ocr", tmp_path / "ocr")
    every, samples = await overload(tmp_path, render(LINES, 0.0), len(LINES))
    lines = lines_read(every, LINES)
    for task in ("text_angle", "ctc_text"):
        name = "edge_stage_batch_size"
        crops = total(samples, name + "_sum", model="ocr", task=task)
        batches = total(samples, name + "_count", model="ocr", task=task)
        at_most_6 = total(samples, name + "_bucket", model="ocr", task=task, le="6.0")
        assert crops == lines, (task, crops, lines)  # every line once, none lost or repeated
        assert batches == at_most_6 > 0, (task, batches, at_most_6)  # capped at max_batch
        assert crops >= 4 * batches, (task, crops, batches)  # lines batched: 6 and 2


#: two lines a frame: a stage batch of more than two crops holds lines of several frames
FEW_LINES = LINES[:2]


async def test_stage_batches_carry_crops_of_several_streams(pulled: Path, tmp_path: Path) -> None:
    """Guards against later stages batched per frame only: frames of different streams that
    the first stage ran together must share the recogniser's batches (several frames per
    stage batch in /metrics, batches larger than one frame's lines), each line's text merged
    back into its own frame's result, every frame answered once."""
    shutil.copytree(pulled / "ocr", tmp_path / "ocr")
    toml = tmp_path / "ocr" / "model.toml"
    text = toml.read_text().replace("max_batch = 2 ", "max_batch = 4 ", 1)
    toml.write_text(text.replace("max_delay_ms = 2.0", 'max_delay_ms = 20.0\nbatching = "max"', 1))
    every, samples = await overload(tmp_path, render(FEW_LINES, 0.0), len(FEW_LINES))
    lines = lines_read(every, FEW_LINES)
    for task in ("text_angle", "ctc_text"):
        crops = total(samples, "edge_stage_batch_size_sum", model="ocr", task=task)
        one_frame = total(samples, "edge_stage_batch_size_bucket", model="ocr", task=task,
                          le=f"{len(FEW_LINES)}.0")  # fmt: skip
        runs = total(samples, "edge_stage_batch_frames_count", model="ocr", task=task)
        alone = total(samples, "edge_stage_batch_frames_bucket", model="ocr", task=task, le="1.0")
        assert crops == lines, (task, crops, lines)  # every line once, in its own frame
        assert alone < runs, (task, alone, runs)  # some runs carried several frames' lines
        assert one_frame < runs, (task, one_frame, runs)  # more lines than one frame has
