"""OCR as a model with stages (#24): text lines found, cut out, turned and read.

Images are rendered here with Pillow's own font, so the true text is known; the wire test
sends them through `/v1/stream?model=ocr` on the real server. The character error rate
allowed is 5% over all lines and 10% on any one line (Levenshtein distance over the rendered
length); on this machine every line comes back exact.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from edge.inference.modelspec import ModelSpec, ModelSpecError
from edge.inference.tasks.textline import CTCText
from tests.conftest import running, settings_for
from tests.pace import deadline, frame_cost
from tests.wsclient import next_reply, open_stream

#: (lines of (text, font size in pixels), rotation in degrees)
PAGES: list[tuple[list[tuple[str, int]], float]] = [
    ([("Hello World 42", 40), ("edge gateway", 28), ("small text here", 18)], 0.0),
    ([("Rotated line 7", 36)], 12.0),
    ([("Upside down", 40)], 180.0),
]


@pytest.fixture(scope="module")
def ocr_repo(pulled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the OCR model alone, copied (model.toml too), not linked."""
    root = tmp_path_factory.mktemp("ocr-repo")
    shutil.copytree(pulled / "ocr", root / "ocr")
    return root


def render(lines: list[tuple[str, int]], angle: float) -> bytes:
    """A white 640x480 PNG with `lines` in black, then turned `angle` degrees."""
    im = PILImage.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(im)
    y = 30
    for text, size in lines:
        draw.text((30, y), text, fill="black", font=ImageFont.load_default(size=size))
        y += int(size * 1.8)
    if angle:
        im = im.rotate(angle, fillcolor="white")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def edits(a: str, b: str) -> int:
    """Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def read_order(detections: list[dict[str, Any]]) -> list[str]:
    """The texts top to bottom (by each region's centre)."""
    centre = [sum(p[1] for p in d["polygon"]) / 4 for d in detections]
    return [d["text"] for _, d in sorted(zip(centre, detections, strict=True), key=lambda t: t[0])]


@pytest.mark.integration
async def test_stream_reads_rendered_text(ocr_repo: Path) -> None:
    """Guards against a warping, turning, padding or CTC decoding mistake: what a client of
    /v1/stream?model=ocr reads must be the text rendered, at several sizes, on a slanted line
    and upside down, each region carrying its text and a confidence."""
    within = deadline(frames=20, model="ppocr_det") + 20 * frame_cost("ppocr_det")
    total = wrong = 0
    async with running(settings_for(ocr_repo)) as (url, _), aiohttp.ClientSession() as http:
        ws, _ = await open_stream(http, url, "ocr")
        for lines, angle in PAGES:
            await ws.send_bytes(render(lines, angle))
            reply = await next_reply(ws, within)
            assert reply["type"] == "result", reply
            dets = reply["detections"]
            assert all(0.0 <= d["confidence"] <= 1.0 for d in dets), dets
            got = read_order(dets)
            want = [text for text, _ in lines]
            if angle == 180.0:
                want = want[::-1]
            assert len(got) == len(want), (got, want)
            for g, w in zip(got, want, strict=True):
                assert edits(g, w) <= 0.1 * len(w), (g, w)
                total, wrong = total + len(w), wrong + edits(g, w)
        await ws.close()
    assert wrong <= 0.05 * total, (wrong, total)


def test_ctc_merges_repeats_and_drops_blanks() -> None:
    """Guards against a CTC decoding slip (a doubled letter lost, a blank read as a symbol,
    the space at the end of the list left out)."""
    spec = ModelSpec.from_dict("rec", {"task": "ctc_text", "input": [320, 48], "layout": "nchw"})
    task = CTCText(spec)
    task.attach({"character": "a\nb\nl"})  # classes: blank, a, b, l, space
    steps = [1, 1, 0, 1, 4, 3, 3, 0, 3, 2]  # a a _ a ␣ l l _ l b
    probs = np.full((len(steps), 5), 0.01, np.float32)
    probs[np.arange(len(steps)), steps] = 0.9
    out = task.postprocess([probs], None, None, 0.5)  # type: ignore[arg-type]
    assert out == {"text": "aa llb", "confidence": pytest.approx(0.9, abs=1e-4)}
    blank = np.zeros((4, 5), np.float32)
    blank[:, 0] = 1.0
    assert task.postprocess([blank], None, None, 0.5) == {"text": "", "confidence": 0.0}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"file": "../x.onnx", "task": "ctc_text", "input": [320, 48]}, "beside model.onnx"),
        ({"file": "r.onnx", "task": "ctc_text", "input": [320, 48], "batch": 2}, "unknown keys"),
        ({"file": "r.onnx", "task": "ctc_text"}, "input must be"),
    ],
)
def test_bad_stages_are_refused_with_the_fix(stages: dict[str, Any], message: str) -> None:
    """Guards against a mistyped `[[stages]]` table loading (or failing later, vaguely)."""
    raw = {"task": "db_text", "input": [640, 480], "stages": [stages]}
    with pytest.raises(ModelSpecError, match=message):
        ModelSpec.from_dict("ocr", raw)
