"""BlazeFace: anchor decoding and blending checked by hand, then the real network on photos."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections import Counter
from types import FrameType
from typing import Any

import numpy as np
import pytest

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.blazeface import BlazeFace, make_anchors, split_outputs
from tests.imagedata import load_rgb
from tests.models_fixture import as_image, loaded, run_model

pytestmark = pytest.mark.unit

SPEC = ModelSpec.from_dict(
    "blazeface",
    {"task": "blazeface", "input": [128, 128], "mean": [127.5] * 3, "std": [127.5] * 3},
)


def fake_outputs(hits: dict[int, tuple[float, list[Any]]]) -> list[np.ndarray]:
    """The four network outputs (batch axis removed, in the ONNX file's order) where only the
    anchors in `hits` (index -> raw score, 16 regressors) score above zero."""
    scores = np.full((896, 1), -30.0, dtype=np.float32)
    boxes = np.zeros((896, 16), dtype=np.float32)
    for index, (raw, reg) in hits.items():
        scores[index, 0] = raw
        boxes[index] = reg
    return [scores[:512], scores[512:], boxes[:512], boxes[512:]]


def square_frame(size: int) -> Image:
    return Image(np.zeros((size, size, 3), np.uint8), size, size)


def test_anchor_layout() -> None:
    """Guards against a wrong anchor order (row, column, anchor), which shifts every face."""
    anchors = make_anchors()
    assert anchors.shape == (896, 2)
    assert anchors[0].tolist() == [0.5 / 16, 0.5 / 16]
    assert anchors[1].tolist() == anchors[0].tolist()  # 2 anchors per cell
    assert anchors[2].tolist() == [1.5 / 16, 0.5 / 16]  # then the next column
    assert anchors[32].tolist() == [0.5 / 16, 1.5 / 16]  # then the next row
    assert anchors[512].tolist() == [0.5 / 8, 0.5 / 8]  # the 8x8 grid follows
    assert anchors[517].tolist() == anchors[512].tolist()  # 6 anchors per cell
    assert anchors[518].tolist() == [1.5 / 8, 0.5 / 8]


def test_decodes_one_anchor_exactly() -> None:
    """Guards against errors in the box/keypoint arithmetic or the map back to frame pixels."""
    # Cell (row 3, column 5) of the 16x16 grid, second anchor: centre (44, 28) input pixels.
    index = (3 * 16 + 5) * 2 + 1
    reg = [4, -2, 20, 10] + [1, 1] * 6
    out = BlazeFace(SPEC).postprocess(
        fake_outputs({index: (2.0, reg)}), *_ctx(square_frame(256)), threshold=0.5
    )
    (det,) = out["detections"]
    assert det["label"] == "face"
    assert det["score"] == round(1 / (1 + math.exp(-2.0)), 4)
    # centre (48, 26), size 20x10 in input pixels; the 256-px frame is 2x the 128-px input
    assert det["box"] == [76.0, 42.0, 116.0, 62.0]
    assert det["keypoints"] == [[90.0, 58.0]] * 6


def test_decodes_coarse_grid_anchor() -> None:
    """Guards against the 8x8 grid's anchors being misplaced after the 16x16 grid's 512."""
    index = 512 + (7 * 8 + 2) * 6 + 4  # row 7, column 2: centre (40, 120) input pixels
    out = BlazeFace(SPEC).postprocess(
        fake_outputs({index: (3.0, [0, 0, 16, 16] + [0, 0] * 6)}),
        *_ctx(square_frame(128)),
        threshold=0.5,
    )
    assert [d["box"] for d in out["detections"]] == [[32.0, 112.0, 48.0, 128.0]]


def test_overlapping_boxes_are_blended_by_score() -> None:
    """Guards against plain NMS (dropping) or unweighted averaging instead of MediaPipe's
    weighted blending, and against unrelated faces being merged."""
    cell = (8 * 16 + 8) * 2  # both anchors of one cell: centre (68, 68)
    far = (1 * 16 + 1) * 2  # centre (12, 12): no overlap
    hits = {
        cell: (math.log(3), [0, 0, 20, 20] + [0, 0] * 6),  # score 0.75
        cell + 1: (-math.log(3), [2, 0, 20, 20] + [4, 0] * 6),  # score 0.25, IoU 0.82
        far: (0.0, [0, 0, 8, 8] + [0, 0] * 6),  # score 0.5
    }
    out = BlazeFace(SPEC).postprocess(fake_outputs(hits), *_ctx(square_frame(128)), 0.2)
    first, second = out["detections"]
    assert first["score"] == 0.75  # the best score of the cluster, not the mean
    assert first["box"] == [58.5, 58.0, 78.5, 78.0]  # x shifted by 0.25 * 2
    assert first["keypoints"][0] == [69.0, 68.0]  # 68 + 0.25 * 4
    assert second == {
        "label": "face",
        "score": 0.5,
        "box": [8.0, 8.0, 16.0, 16.0],
        "keypoints": [[12.0, 12.0]] * 6,
    }


def test_threshold_is_inclusive_and_extreme_logits_do_not_warn() -> None:
    """Guards against overflow warnings from exp() (errors under the test settings) and
    against a score equal to the threshold being dropped."""
    hits = {0: (1e4, [0, 0, 4, 4] + [0] * 12), 100: (0.0, [0, 0, 4, 4] + [0] * 12)}
    outputs = fake_outputs(hits)
    outputs[0][5, 0] = -1e4
    out = BlazeFace(SPEC).postprocess(outputs, *_ctx(square_frame(128)), threshold=0.5)
    assert [d["score"] for d in out["detections"]] == [1.0, 0.5]


def test_outputs_are_recognised_in_any_order_and_bad_shapes_refused() -> None:
    """Guards against depending on the session's output order, and against silently
    decoding a different model's outputs."""
    outputs = fake_outputs({3: (5.0, list(range(16)))})
    scores, boxes = split_outputs(outputs[::-1])
    assert scores.shape == (896,) and boxes.shape == (896, 16)
    assert scores[3] == 5.0 and boxes[3].tolist() == list(range(16))
    with pytest.raises(ValueError, match="expected outputs shaped"):
        split_outputs(outputs[:3])


def test_unknown_option_is_refused() -> None:
    """Guards against a misspelt model.toml option being silently ignored."""
    spec = ModelSpec.from_dict(
        "bf", {"task": "blazeface", "input": [128, 128], "options": {"nms": 0.5}}
    )
    with pytest.raises(ValueError, match="unknown \\[options\\] \\['nms'\\]"):
        BlazeFace(spec)


def _ctx(image: Image) -> tuple[object, Image]:
    _, ctx = BlazeFace(SPEC).preprocess(image)
    return ctx, image


# --- the real network -------------------------------------------------------------------


def test_finds_the_astronauts_face() -> None:
    """Guards against wrong preprocessing (normalisation, channel order, letterbox) or
    decoding on a real photo: the face must be found where it is, with keypoints in place."""
    out = run_model("blazeface", as_image(load_rgb("astronaut.png")))
    (face,) = out["detections"]
    assert 0.85 < face["score"] < 0.99
    assert face["box"] == pytest.approx([179, 82, 273, 176], abs=6)
    right_eye, left_eye, nose, mouth, right_ear, left_ear = face["keypoints"]
    x1, y1, x2, y2 = face["box"]
    for x, y in face["keypoints"]:
        assert x1 - 5 <= x <= x2 + 5 and y1 <= y <= y2
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right is the image's left
    assert right_ear[0] < right_eye[0] and left_eye[0] < left_ear[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]


@pytest.mark.parametrize("name", ["coffee.png", "rocket.jpg"])
def test_no_face_in_photos_without_people(name: str) -> None:
    """Guards against decoding that invents faces: every anchor stays well below 0.5.
    (chelsea.png is not used: the cat's face scores about 0.49 with this letterbox.)"""
    out = run_model("blazeface", as_image(load_rgb(name)), threshold=0.0)
    assert max(d["score"] for d in out["detections"]) < 0.4


def test_boxes_are_in_frame_pixels_whatever_the_decode_scale() -> None:
    """Guards against boxes in decoded-pixel units when the decoder scaled the frame down."""
    pixels = load_rgb("astronaut.png")
    full = run_model("blazeface", as_image(pixels))["detections"][0]
    half = Image(pixels[::2, ::2].copy(), width=512, height=512)
    reduced = run_model("blazeface", half)["detections"][0]
    assert reduced["box"] == pytest.approx(full["box"], abs=3)


@pytest.mark.parametrize(("canvas", "at"), [((256, 512), (200, 0)), ((512, 256), (0, 150))])
def test_letterbox_padding_is_undone(canvas: tuple[int, int], at: tuple[int, int]) -> None:
    """Guards against a wrong pad offset when the frame is wider or taller than square."""
    crop = load_rgb("astronaut.png")[:256, 100:356]  # the face at about (79, 82)-(173, 176)
    frame = np.full((*canvas, 3), 90, dtype=np.uint8)
    dx, dy = at
    frame[dy : dy + 256, dx : dx + 256] = crop
    (face,) = run_model("blazeface", as_image(frame))["detections"]
    assert face["box"] == pytest.approx([79 + dx, 82 + dy, 173 + dx, 176 + dy], abs=8)


def test_pre_and_post_processing_stay_vectorised() -> None:
    """Guards against losing vectorisation. Counted, whatever the machine: both steps for a
    240x180 frame run fewer lines of the gateway's Python than BlazeFace has anchors (896),
    so no step loops over the anchors in Python. Timed, turn about with the session run on
    this machine in this test (a busy or slow machine slows both alike): both steps together
    cost less than the network run they surround (about half of it on the 2-core box)."""
    task, session = loaded("blazeface")
    with_face = as_image(np.ascontiguousarray(load_rgb("astronaut.png")[::2, ::2][:180, :240]))
    tensor, ctx = task.preprocess(with_face)
    feed = {"input:0": tensor[None]}
    outputs = [o[0] for o in session.run(None, feed)]

    lines = Counter[str]()

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and f"{os.sep}edge{os.sep}" in frame.f_code.co_filename:
            lines[frame.f_code.co_name] += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        _, ctx = task.preprocess(with_face)
        task.postprocess(outputs, ctx, with_face, 0.5)
    finally:
        sys.settrace(previous)
    assert 0 < lines.total() < 896, f"lines run, by function: {lines.most_common()}"

    steps, runs = [], []
    for _ in range(60):
        t0 = time.perf_counter()
        session.run(None, feed)
        t1 = time.perf_counter()
        _, ctx = task.preprocess(with_face)
        task.postprocess(outputs, ctx, with_face, 0.5)
        steps.append(time.perf_counter() - t1)
        runs.append(t1 - t0)
    step, run = statistics.median(steps), statistics.median(runs)
    assert step < run, f"pre- and postprocess {step * 1e3:.2f} ms, session run {run * 1e3:.2f} ms"
