"""Shared pixel and box helpers: letterbox geometry, normalisation, the three NMS flavours."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.frames import Image
from edge.inference.tasks.imaging import (
    iou_one_to_many,
    letterbox,
    nms,
    nms_per_class,
    normalize,
    stretch,
    weighted_nms,
)

pytestmark = pytest.mark.unit


def test_letterbox_places_and_pads_a_wide_frame() -> None:
    """Guards against stretching, off-centre placement or the wrong pad value."""
    pixels = np.zeros((50, 200, 3), np.uint8)
    pixels[:, :100] = (255, 0, 0)  # left half red, right half black
    canvas, box = letterbox(Image(pixels, 200, 50), 100, 100, pad=114)
    assert canvas.shape == (100, 100, 3)
    assert (box.pad_x, box.pad_y, box.scale_x, box.scale_y) == (0, 37, 0.5, 0.5)
    assert box.content == (0, 37, 100, 62)
    assert (canvas[:37] == 114).all() and (canvas[62:] == 114).all()
    assert canvas[50, 10].tolist() == [255, 0, 0] and canvas[50, 90].tolist() == [0, 0, 0]


def test_letterbox_edge_padding_repeats_the_outermost_pixels() -> None:
    """Guards against a flat border (which text detectors read as text) when asked for edge
    padding, and against an unusable pad value passing silently."""
    pixels = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    canvas, box = letterbox(Image(pixels, 4, 2), 4, 6, pad="edge")
    assert box.content == (0, 2, 4, 4)
    assert (canvas[:2] == pixels[0]).all() and (canvas[4:] == pixels[1]).all()
    tall, _ = letterbox(Image(pixels[:, :2].copy(), 2, 2), 4, 2, pad="edge")
    assert tall[:, 0].tolist() == tall[:, 1].tolist() == pixels[:, 0].tolist()
    assert tall[:, 3].tolist() == pixels[:, 1].tolist()
    with pytest.raises(ValueError, match="pad must be"):
        letterbox(Image(pixels, 4, 2), 4, 6, pad=300)


def test_letterbox_uses_the_frame_size_not_the_decoded_size() -> None:
    """Guards against mapping boxes into decoded pixels when the frame was decoded smaller."""
    decoded = np.zeros((60, 80, 3), np.uint8)  # a 640x480 frame decoded at 1/8 scale
    canvas, box = letterbox(Image(decoded, 640, 480), 128, 128)
    assert canvas.shape == (128, 128, 3)
    assert box.content == (0, 16, 128, 112)
    corners = box.to_frame(np.array([[0, 16, 128, 112]], dtype=np.float32))
    assert corners.tolist() == [[0.0, 0.0, 640.0, 480.0]]


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 400),
    h=st.integers(1, 400),
    shrink=st.integers(1, 4),
    iw=st.integers(8, 160),
    ih=st.integers(8, 160),
)
def test_letterbox_content_maps_back_onto_the_whole_frame(
    w: int, h: int, shrink: int, iw: int, ih: int
) -> None:
    """Guards against rounding or offset errors that shift boxes near the frame's edges."""
    decoded = np.zeros((max(1, h // shrink), max(1, w // shrink), 3), np.uint8)
    canvas, box = letterbox(Image(decoded, w, h), iw, ih)
    assert canvas.shape == (ih, iw, 3)
    x1, y1, x2, y2 = box.content
    assert 0 <= x1 < x2 <= iw and 0 <= y1 < y2 <= ih
    back = box.to_frame(np.array([[x1, y1, x2, y2]], dtype=np.float32))[0]
    assert back == pytest.approx([0, 0, w, h], abs=1e-3 * max(w, h))


def test_stretch_maps_each_axis_separately() -> None:
    """Guards against a single scale being used for both axes when stretching."""
    _, box = stretch(Image(np.zeros((30, 40, 3), np.uint8), 400, 300), 100, 50)
    assert box.to_frame(np.array([[100, 50]], np.float32)).tolist() == [[400.0, 300.0]]


def test_normalize_layouts_and_channel_order() -> None:
    """Guards against a wrong layout, channel order or per-channel mean/std."""
    px = np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8)  # 1x2 RGB
    mean, std = (10.0, 20.0, 30.0), (1.0, 2.0, 5.0)
    hwc = normalize(px, mean, std, "nhwc")
    assert hwc.dtype == np.float32 and hwc.shape == (1, 2, 3)
    assert hwc.tolist() == [[[0, 0, 0], [30, 15, 6]]]
    chw = normalize(px, mean, std, "nchw")
    assert chw.shape == (3, 1, 2) and chw.flags.c_contiguous
    assert chw.tolist() == [[[0, 30]], [[0, 15]], [[0, 6]]]
    bgr = normalize(px, mean, std, "nchw", bgr=True)
    assert bgr.tolist() == [[[0, 6]], [[0, 15]], [[0, 30]]]
    with pytest.raises(ValueError, match="layout"):
        normalize(px, mean, std, "hwc")


def test_nms_keeps_the_best_of_each_overlapping_group() -> None:
    """Guards against keeping the wrong box or suppressing boxes that barely overlap."""
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [5, 0, 15, 10]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    # IoU(1, 0) = 9/11 > 0.5; IoU(1, 3) = 6/14 < 0.5; box 2 is alone.
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.5, max_out=2).tolist() == [1, 2]


def test_class_aware_nms_never_suppresses_across_classes() -> None:
    """Guards against a person box suppressing the dog box it overlaps."""
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 1, 0])
    assert nms_per_class(boxes, scores, classes, 0.5).tolist() == [0, 1]
    assert nms_per_class(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).size == 0


boxes_st = st.lists(
    st.tuples(
        st.integers(0, 50), st.integers(0, 50), st.integers(1, 30), st.integers(1, 30),
        st.floats(0.01, 1.0), st.integers(0, 2),
    ),
    min_size=0,
    max_size=25,
)  # fmt: skip


Row = tuple[int, int, int, int, float, int]


def _arrays(rows: list[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows], float).reshape(-1, 4)
    scores = np.array([s for *_, s, _ in rows], float)
    classes = np.array([c for *_, c in rows], int)
    return boxes, scores, classes


@settings(max_examples=80, deadline=None)
@given(rows=boxes_st, iou=st.sampled_from([0.1, 0.3, 0.45, 0.5]) | st.floats(0.1, 0.9))
def test_nms_invariants(rows: list[Row], iou: float) -> None:
    """Guards against NMS that keeps overlapping boxes or drops a box nothing better covers."""
    boxes, scores, classes = _arrays(rows)
    keep = nms_per_class(boxes, scores, classes, iou)
    assert list(scores[keep]) == sorted(scores[keep], reverse=True)
    for i in range(len(boxes)):
        same = [k for k in keep if classes[k] == classes[i] and k != i]
        overlaps = iou_one_to_many(boxes[i], boxes[same]) if same else np.zeros(0)
        if i in keep:
            assert (overlaps <= iou + 1e-9).all()
        else:
            covering = zip(overlaps, same, strict=True)
            assert any(o > iou and scores[k] >= scores[i] for o, k in covering)


def test_weighted_nms_blends_clusters() -> None:
    """Guards against plain suppression where the cluster should be averaged by score."""
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.6, 0.2, 0.9])
    merged, best = weighted_nms(boxes, scores, boxes, 0.3)
    assert best.tolist() == [0.9, 0.6]
    assert merged.tolist() == [[50, 50, 60, 60], pytest.approx([0.5, 0, 10.5, 10])]


@settings(max_examples=60, deadline=None)
@given(rows=boxes_st)
def test_weighted_nms_keeps_every_box_when_nothing_overlaps_enough(rows: list[Row]) -> None:
    """Guards against boxes being merged at IoU <= threshold, or lost."""
    boxes, scores, _ = _arrays(rows)
    merged, best = weighted_nms(boxes, scores, boxes, 1.0)
    order = np.argsort(-scores, kind="stable")
    assert best.tolist() == scores[order].tolist()
    assert merged == pytest.approx(boxes[order].reshape(-1, 4))
