"""OCR text everywhere results go (#24): KServe over REST and gRPC (Triton's own clients) and
the gRPC InferenceService (a client of the original contract, its new fields read with the
gateway's full message) carry what each text line reads, not only where it is.

A page rendered with Pillow (tests/test_ocr.py) goes in; the strings come back in the
`texts` tensor (BYTES, one per row of `boxes`) with `text_confidences` (FP32), and in each
`Detection.text` / `text_confidence`. Character error rate allowed: 10% per line, as
tests/test_ocr.py; on this machine every line comes back exact.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from tests import grpcclient as gc
from tests.conftest import settings_for
from tests.pace import deadline, frame_cost
from tests.test_kserve import NO_RATE_LIMITS
from tests.test_ocr import edits, render

pytestmark = pytest.mark.integration

LINES = [("Hello World 42", 40), ("edge gateway", 28)]
WANT = [text for text, _ in LINES]


def within() -> float:
    """Seconds to allow one OCR frame (the detector, then its stages on each line)."""
    return deadline(frames=20, model="ppocr_det") + 20 * frame_cost("ppocr_det")


@pytest.fixture(scope="module")
def page() -> bytes:
    return render(LINES, 0.0)


@pytest.fixture
async def gateway(pulled: Path, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """The gateway serving `ocr` alone (copied), with gRPC: (host:port of HTTP, of gRPC)."""
    shutil.copytree(pulled / "ocr", tmp_path / "ocr")
    async with gc.grpc_gateway(settings_for(tmp_path, **NO_RATE_LIMITS)) as (url, _, target):
        yield url.removeprefix("http://"), target


def top_to_bottom(boxes: np.ndarray, texts: np.ndarray, confidences: np.ndarray) -> list[str]:
    """The rows' texts ordered by their boxes' tops, each row checked to have a confidence."""
    assert len(boxes) == len(texts) == len(confidences), (boxes, texts, confidences)
    assert all(0.0 < c <= 1.0 for c in confidences.tolist()), confidences
    order = np.argsort(boxes[:, 1], kind="stable")
    return [bytes(texts[i]).decode() for i in order]


def assert_reads(got: list[str]) -> None:
    assert len(got) == len(WANT), (got, WANT)
    for g, w in zip(got, WANT, strict=True):
        assert edits(g, w) <= 0.1 * len(w), (g, w)


def image_of(module: Any, data: bytes) -> Any:
    i = module.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(np.array([data], dtype=object))
    return i


async def test_kserve_rest_and_grpc_carry_texts(gateway: tuple[str, str], page: bytes) -> None:
    """Guards against the text a stage gives staying in the JSON: KServe's metadata must
    declare `texts` and `text_confidences` after the detector's tensors, and Triton's HTTP
    and gRPC clients must read each line's text row for row with `boxes`."""
    host, target = gateway
    names = ["boxes", "scores", "labels", "polygons", "texts", "text_confidences", "result"]
    outputs = ["boxes", "texts", "text_confidences"]

    def check() -> None:
        http = triton_http.InferenceServerClient(host, network_timeout=within())
        meta = http.get_model_metadata("ocr")
        assert [o["name"] for o in meta["outputs"]] == names
        assert {o["name"]: o["datatype"] for o in meta["outputs"]}["texts"] == "BYTES"
        wanted = [triton_http.InferRequestedOutput(n) for n in outputs]
        r = http.infer("ocr", [image_of(triton_http, page)], outputs=wanted)
        assert_reads(top_to_bottom(*(r.as_numpy(n) for n in outputs)))
        http.close()
        g = triton_grpc.InferenceServerClient(target)
        meta = g.get_model_metadata("ocr", as_json=True)
        assert [o["name"] for o in meta["outputs"]] == names
        r = g.infer("ocr", [image_of(triton_grpc, page)], client_timeout=within())
        assert_reads(top_to_bottom(*(r.as_numpy(n) for n in outputs)))
        g.close()

    await asyncio.to_thread(check)


async def test_grpc_predict_stream_carries_text(gateway: tuple[str, str], page: bytes) -> None:
    """Guards against gRPC InferenceService dropping the text: a PredictStream client (the
    original contract) gets, for each frame, detections whose `text` and `text_confidence`
    (new fields, read with the full message) say what each line reads."""
    _, target = gateway
    count = 2

    async def frames() -> AsyncIterator[Any]:
        for _ in range(count):
            yield gc.request(page, "ocr")

    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream(frames(), timeout=count * within())
        responses = [gc.full(r) async for r in call]
    results = [r for r in responses if r.status == r.RESULT]
    assert results and len(responses) == count, responses
    for r in results:
        assert r.model == "ocr@1"
        dets = sorted(r.detections, key=lambda d: d.box.y1)
        assert all(d.HasField("text") and 0.0 < d.text_confidence <= 1.0 for d in dets), dets
        assert_reads([d.text for d in dets])
