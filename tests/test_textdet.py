"""DB text detection: region finding and box geometry by hand, then the real PP-OCR model.

The expected boxes on page.png and text.png are those rapidocr 3.10.0's own DBPostProcess
(OpenCV contours, pyclipper unclip, score_mode="slow") gives on the same probability maps
with the same thresholds, checked once by running it; the pictures with the boxes drawn
were also looked at: one box per printed line.
"""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.regions import (
    Polygons,
    Regions,
    clockwise_from_top_left,
    expand_rect,
    label_regions,
    min_area_rects,
)
from edge.inference.tasks.textdet import DBText
from tests.imagedata import load_rgb
from tests.models_fixture import as_image, loaded, run_model

pytestmark = pytest.mark.unit


def flood_fill_labels(mask: np.ndarray) -> set[frozenset[tuple[int, int]]]:
    """Reference 8-connected regions, one pixel at a time (slow, obviously right)."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = set()
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, region = [(y0, x0)], set()
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            region.add((int(y), int(x)))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.add(frozenset(region))
    return regions


def regions_as_pixel_sets(mask: np.ndarray, grow: bool = False) -> set[frozenset[tuple[int, int]]]:
    r = label_regions(mask, grow)
    pixels: dict[int, set[tuple[int, int]]] = {}
    for row, start, end, label in zip(r.row, r.start, r.end, r.label, strict=True):
        pixels.setdefault(int(label), set()).update((int(row), x) for x in range(start, end))
    assert len(pixels) == r.count
    return {frozenset(p) for p in pixels.values()}


def test_regions_join_diagonals_and_u_shapes() -> None:
    """Guards against 4-connectivity (splitting diagonal strokes) and against regions whose
    two arms only meet further down staying split."""
    mask = np.array(
        [
            [1, 0, 1, 0, 0, 0],
            [1, 0, 1, 0, 0, 1],
            [1, 1, 1, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 1],
        ],
        dtype=bool,
    )
    assert regions_as_pixel_sets(mask) == flood_fill_labels(mask)
    assert label_regions(mask).count == 4
    assert label_regions(np.zeros((4, 4), bool)).count == 0


@settings(max_examples=120, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda h: st.lists(st.lists(st.booleans(), min_size=9, max_size=9), min_size=h, max_size=h)
    )
)
def test_regions_match_a_flood_fill(rows: list[list[bool]]) -> None:
    """Guards against the vectorised run union missing or inventing a connection, and against
    growing the mask other than one pixel right and down, or across the edge of a row."""
    mask = np.array(rows, dtype=bool)
    assert regions_as_pixel_sets(mask) == flood_fill_labels(mask)
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:, 1:] |= grown[:, :-1].copy()
    assert regions_as_pixel_sets(mask, grow=True) == flood_fill_labels(grown)


def test_region_sums_are_over_its_own_pixels() -> None:
    """Guards against region scores that include neighbouring pixels or other regions."""
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 1]], dtype=bool)
    values = np.array([[0.5, 0.7, 9.0, 0.2], [9.0, 9.0, 9.0, 0.4]])
    r = label_regions(mask)
    sums, pixels = r.sums(values)
    got = sorted(zip((sums / pixels).round(6).tolist(), pixels.tolist(), strict=True))
    assert got == [(0.3, 2.0), (0.6, 2.0)]  # the last run ends with the array
    sums, pixels = label_regions(np.array([[0, 1, 1, 0]], bool)).sums(np.array([[9, 1, 2, 9.0]]))
    assert (sums.tolist(), pixels.tolist()) == ([3.0], [2.0])  # the last run ends before it


def assert_is_hull(hull: np.ndarray, points: np.ndarray) -> None:
    """`hull` lists input points, turns left at every vertex (counter-clockwise, no three in
    line), and has every input point inside or on it."""
    inputs = {tuple(p) for p in points.tolist()}
    assert {tuple(p) for p in hull.tolist()} <= inputs
    assert len({tuple(p) for p in hull.tolist()}) == len(hull)
    if len(hull) < 3:
        return
    a = hull
    edge = np.roll(hull, -1, axis=0) - a
    after = np.roll(edge, -1, axis=0)
    turn = edge[:, 0] * after[:, 1] - edge[:, 1] * after[:, 0]
    assert (turn > 0).all()
    side = edge[:, None, 0] * (points[None, :, 1] - a[:, None, 1]) - edge[:, None, 1] * (
        points[None, :, 0] - a[:, None, 0]
    )
    assert (side >= 0).all()


def region_corners(regions: Regions, label: int) -> np.ndarray:
    """Every corner of every pixel of one region, `(k, 2)` as (x, y)."""
    rows_, xs = [], []
    for row, start, end, run_label in zip(
        regions.row, regions.start, regions.end, regions.label, strict=True
    ):
        if run_label == label:
            rows_ += [row] * (end - start)
            xs += list(range(start, end))
    y, x = np.array(rows_, np.float64), np.array(xs, np.float64)
    return np.concatenate([np.stack([x + dx, y + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])


masks = st.integers(1, 14).flatmap(
    lambda h: st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=h, max_size=h)
)


@settings(max_examples=200, deadline=None)
@given(masks, st.randoms(use_true_random=False))
def test_region_hulls_are_exact(rows: list[list[bool]], rng: Any) -> None:
    """Guards against the row-end shortcut leaving out a corner the hull needs, against the
    corner removal taking a hull vertex or keeping one in line, and against hulls assigned to
    the wrong region when only some regions are asked for, in any order."""
    mask = np.array(rows, dtype=bool)
    regions = label_regions(mask)
    if not regions.count:
        return
    labels = list(range(regions.count))
    rng.shuffle(labels)
    labels = labels[: rng.randint(1, regions.count)]
    hulls = regions.hulls(np.array(labels))
    assert hulls.count == len(labels)
    for j, label in enumerate(labels):
        assert_is_hull(hulls[j], region_corners(regions, label))


@settings(max_examples=150, deadline=None)
@given(masks)
def test_min_area_rects_hold_each_region_and_are_smallest(rows: list[list[bool]]) -> None:
    """Guards against a rectangle that cuts a region off, one that is not the smallest (checked
    against 720 rotations tried by brute force), one computed from another region's hull, or
    answers that change when polygons are taken in groups by size."""
    mask = np.array(rows, dtype=bool)
    regions = label_regions(mask)
    if not regions.count:
        return
    hulls = regions.hulls(np.arange(regions.count))
    corners, along, across = min_area_rects(hulls)
    for budget in (0, 64):  # one polygon per chunk; several, from sizes taken apart
        grouped = min_area_rects(hulls, budget=budget)
        for got, want in zip(grouped, (corners, along, across), strict=True):
            assert np.array_equal(got, want)
    angles = np.linspace(0, np.pi / 2, 720, endpoint=False)
    turns = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    normals = np.stack([-turns[:, 1], turns[:, 0]], axis=1)
    for label in range(regions.count):
        points = region_corners(regions, label)
        rect = corners[label]
        u, v = rect[1] - rect[0], rect[3] - rect[0]
        assert np.hypot(*u) == pytest.approx(along[label])
        assert np.hypot(*v) == pytest.approx(across[label])
        assert abs(float(u @ v)) < 1e-9  # a rectangle
        for axis, length in ((u, along[label]), (v, across[label])):
            reach = (points - rect[0]) @ (axis / length)
            assert reach.min() >= -1e-9 and reach.max() <= length + 1e-9
        tried = np.ptp(points @ turns.T, axis=0) * np.ptp(points @ normals.T, axis=0)
        assert along[label] * across[label] <= tried.min() + 1e-9


def test_one_large_region_among_many_small_ones_keeps_memory_bounded() -> None:
    """Guards against padding every region to the largest one's hull (23 MB for this map
    before polygons were grouped by size; 6 MB after)."""
    yy, xx = np.mgrid[0:480, 0:640]
    prob = np.zeros((480, 640), np.float32)
    prob[(xx - 120) ** 2 + (yy - 240) ** 2 < 115**2] = 0.9
    for y in range(12, 480, 19):
        for x in range(253, 640, 19):
            prob[(xx - x) ** 2 + (yy - y) ** 2 < 64] = 0.9
    task = DBText(
        ModelSpec.from_dict("text", {"task": "db_text", "input": [640, 480], "layout": "nchw"})
    )
    image = Image(np.zeros((480, 640, 3), np.uint8), 640, 480)
    _, ctx = task.preprocess(image)
    tracemalloc.start()
    try:
        found = task.postprocess([prob[None]], ctx, image, 0.3)["detections"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(found) == 526  # the large disc and 525 small ones
    assert peak < 12e6, peak


def test_min_area_rect_of_a_rotated_rectangle() -> None:
    """Guards against an axis-aligned fallback where text lines are slanted."""
    angle = math.radians(20)
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-math.sin(angle), math.cos(angle)])
    rect = np.array(
        [(100, 50), (100, 50) + 40 * u, (100, 50) + 40 * u + 10 * v, (100, 50) + 10 * v]
    )
    square = np.array([[0, 0], [3, 0], [3, 3], [0, 3]], np.float64)
    both = Polygons(np.concatenate([rect, square]), np.repeat([0, 1], 4), 2)
    corners, along, across = min_area_rects(both)
    assert sorted([along[0], across[0]]) == pytest.approx([10, 40])
    assert clockwise_from_top_left(corners[0]) == pytest.approx(clockwise_from_top_left(rect))
    assert [along[1], across[1]] == pytest.approx([3, 3])
    assert clockwise_from_top_left(corners[1]) == pytest.approx(square)
    none = min_area_rects(Polygons(np.empty((0, 2)), np.empty(0, np.intp), 0))
    assert [a.shape for a in none] == [(0, 4, 2), (0,), (0,)]


def test_expand_rect_moves_every_side_out() -> None:
    """Guards against unclipping that grows the box on one side only or shrinks it, or that
    mixes up the distances of rectangles grown together."""
    box = np.array([[0, 0], [10, 0], [10, 4], [0, 4]], np.float64)
    grown = expand_rect(box, 1.5)
    assert grown.min(axis=0) == pytest.approx([-1.5, -1.5])
    assert grown.max(axis=0) == pytest.approx([11.5, 5.5])
    two = expand_rect(np.stack([box, box + 20]), np.array([1.0, 2.0]))
    assert two[0].min(axis=0) == pytest.approx([-1, -1])
    assert two[1].max(axis=0) == pytest.approx([32, 26])


def test_clockwise_from_top_left() -> None:
    """Guards against polygons whose corner order changes from box to box."""
    shuffled = np.array([[10, 10], [0, 0], [0, 10], [10, 0]], float)
    assert clockwise_from_top_left(shuffled).tolist() == [[0, 0], [10, 0], [10, 10], [0, 10]]


def spec(**options: object) -> ModelSpec:
    raw = {"task": "db_text", "input": [128, 64], "layout": "nchw", "options": options}
    return ModelSpec.from_dict("text", raw)


def decode(
    prob: np.ndarray, frame: tuple[int, int], threshold: float = 0.6, **options: object
) -> list[dict[str, Any]]:
    task = DBText(spec(**options))
    image = Image(np.zeros((frame[1], frame[0], 3), np.uint8), *frame)
    _, ctx = task.preprocess(image)
    return task.postprocess([prob[None]], ctx, image, threshold)["detections"]


def test_one_region_becomes_one_unclipped_box_in_frame_pixels() -> None:
    """Guards against errors in scoring, unclipping (area * ratio / perimeter) or the map from
    input to frame pixels."""
    prob = np.zeros((64, 128), np.float32)
    prob[20:30, 10:110] = 0.9  # 100 x 10 input pixels
    (det,) = decode(prob, (256, 128), dilate=False)
    grow = 100 * 10 * 1.5 / (2 * 110)
    x1, y1, x2, y2 = 10 - grow, 20 - grow, 110 + grow, 30 + grow
    assert det["label"] == "text" and det["score"] == 0.9
    assert det["box"] == pytest.approx([2 * x1, 2 * y1, 2 * x2, 2 * y2], abs=0.05)
    expected = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    assert det["polygon"] == pytest.approx(2 * np.array(expected), abs=0.05)


def test_weak_small_or_faint_regions_are_dropped() -> None:
    """Guards against reporting noise: regions under the score threshold, under the
    binarisation threshold, or too thin to be text."""
    prob = np.zeros((64, 128), np.float32)
    prob[5:15, 5:60] = 0.5  # mean below the 0.6 threshold
    prob[30:40, 5:60] = 0.25  # below bin_thresh: not even a region
    prob[50:52, 100:102] = 1.0  # 2 x 2: thinner than min_size
    prob[30:40, 70:120] = 0.8  # the only real one
    dets = decode(prob, (128, 64), dilate=False)
    assert [d["score"] for d in dets] == [0.8]
    assert decode(prob, (128, 64), threshold=0.4, dilate=False)[1]["score"] == 0.5


def test_dilation_joins_characters_split_by_a_hairline() -> None:
    """Guards against one line of text breaking into a box per character."""
    prob = np.zeros((64, 128), np.float32)
    prob[20:30, 10:40] = 0.9
    prob[21:31, 41:70] = 0.9  # one pixel column apart, one row lower
    assert len(decode(prob, (128, 64), dilate=False)) == 2
    assert len(decode(prob, (128, 64))) == 1


def test_input_size_must_suit_the_network() -> None:
    """Guards against a model.toml the network cannot take failing only on the first frame."""
    bad = ModelSpec.from_dict("t", {"task": "db_text", "input": [100, 64], "layout": "nchw"})
    with pytest.raises(ValueError, match="multiples of 32"):
        DBText(bad)
    with pytest.raises(ValueError, match='layout = "nchw"'):
        DBText(ModelSpec.from_dict("t", {"task": "db_text", "input": [64, 64]}))


# --- the real network -------------------------------------------------------------------

PAGE_LINES = [  # page.png: the title, five lines of a paragraph, a line of code
    [2, 7, 295, 34],
    [1, 42, 379, 65],
    [0, 60, 379, 84],
    [1, 77, 380, 104],
    [1, 93, 381, 123],
    [1, 110, 174, 140],
    [13, 161, 244, 190],
]


def test_finds_each_printed_line_on_page() -> None:
    """Guards against wrong preprocessing (normalisation, letterbox) or postprocessing on a
    real page: one box per line, where the reference implementation puts it."""
    dets = run_model("ppocr_det", as_image(load_rgb("page.png")))["detections"]
    boxes = sorted((d["box"] for d in dets), key=lambda b: b[1])
    assert len(boxes) == len(PAGE_LINES)
    for got, want in zip(boxes, PAGE_LINES, strict=True):
        assert got == pytest.approx(want, abs=4)
    assert all(0.8 < d["score"] < 0.95 for d in dets)
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)


def test_slanted_handwriting_gets_rotated_boxes() -> None:
    """Guards against axis-aligned boxes (or none) on text that runs at an angle."""
    dets = run_model("ppocr_det", as_image(load_rgb("text.png")))["detections"]
    dets.sort(key=lambda d: d["box"][0])
    want = [[0, 24, 138, 146], [3, 78, 299, 171], [97, 6, 346, 143], [319, 43, 443, 132]]
    assert [d["box"] for d in dets] == [pytest.approx(w, abs=4) for w in want]
    slopes = []
    for d in dets:
        (ax, ay), (bx, by) = d["polygon"][:2]  # the top edge, left to right
        slopes.append(math.degrees(math.atan2(by - ay, bx - ax)))
    # the three groups on the left fall to the right; the short one on the right is level
    assert all(5 < s < 30 for s in slopes[:3]) and abs(slopes[3]) < 5


def test_no_text_on_a_flat_grey_frame() -> None:
    """Guards against boxes invented on an empty picture (e.g. along the letterbox border)."""
    grey = np.full((480, 640, 3), 128, np.uint8)
    assert run_model("ppocr_det", as_image(grey))["detections"] == []
    wide = np.full((200, 640, 3), 128, np.uint8)  # padded above and below
    assert run_model("ppocr_det", as_image(wide))["detections"] == []


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png", "camera.png"])
def test_no_text_in_photos_without_writing(name: str) -> None:
    """Guards against the letterbox border being read as text: with black padding rocket and
    chelsea each came back as one box nearly the size of the frame, camera with a small one."""
    assert run_model("ppocr_det", as_image(load_rgb(name)))["detections"] == []


def test_frames_of_any_size_batch_together() -> None:
    """Guards against per-frame input sizes, which would stop streams sharing a batch."""
    task, _ = loaded("ppocr_det")
    shapes = {task.preprocess(as_image(load_rgb(n)))[0].shape for n in ("page.png", "coffee.png")}
    assert shapes == {(3, 480, 640)}
