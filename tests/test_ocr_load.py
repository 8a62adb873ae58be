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


async def test_stage_batches_under_overload(pulled: Path, tmp_path: Path) -> None:
    """Guards against stages breaking the stream rules under load (a frame answered twice or
    never, a queue instead of latest-frame-wins) and against stage batches nobody can see:
    each stage's batch sizes must be in /metrics, adding up to the lines read."""
    shutil.copytree(pulled / "ocr", tmp_path / "ocr")
    page = render(LINES, 0.0)
    # one OCR frame of eight lines, as tests/test_ocr.py allows one of three, times two
    per_frame = 2 * (20 * frame_cost("ppocr_det"))
    fps = max(50.0, outpacing_fps(STREAMS, model="ppocr_det"))
    async with (
        running(settings_for(tmp_path, **NO_RATE_LIMITS)) as (url, _),
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
    lines = 0
    for _, books in clients:
        assert books.unanswered() == [] and books.answered_twice() == [], books.kinds()
        assert books.kinds().get("dropped:stale", 0) > 0, books.kinds()
        for msgs in books.replies.values():
            if msgs[0]["type"] == "result":
                dets = msgs[0]["detections"]
                assert len(dets) == len(LINES), dets
                assert all(d["text"].startswith("line ") for d in dets), dets
                lines += len(dets)
    for task in ("text_angle", "ctc_text"):
        name = "edge_stage_batch_size"
        crops = total(samples, name + "_sum", model="ocr", task=task)
        batches = total(samples, name + "_count", model="ocr", task=task)
        at_most_6 = total(samples, name + "_bucket", model="ocr", task=task, le="6.0")
        assert crops == lines, (task, crops, lines)  # every line once, none lost or repeated
        assert batches == at_most_6 > 0, (task, batches, at_most_6)  # capped at max_batch
        assert crops >= 4 * batches, (task, crops, batches)  # lines batched: 6 and 2
