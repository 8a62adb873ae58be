"""The stage runner (edge/inference/stages.py) on a stand-in stage whose network reads each
crop's width: crops of several frames batched together, each answer merged back into its own
frame's region, and a frame that breaks a stage costing only itself."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.stages import Stage, run_stages
from edge.inference.tasks.crops import RegionTask

pytestmark = pytest.mark.unit

#: a crop this wide breaks the stand-in stage's postprocess
UNREADABLE = 13


class Widths(RegionTask):
    """Reads a crop's width: its sample is the width repeated, as wide as the crop."""

    name = "widths"
    kind = "test"
    takes = "box"
    gives = ("text",)

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        return np.full((1, 2, image.width), float(image.width), np.float32), None

    def batch_width(self, widths: list[int]) -> int:
        return max(widths)

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        if image.width == UNREADABLE:
            raise ValueError("a crop this stage cannot read")
        return {"text": str(int(outputs[0]))}


class FirstColumn:
    """An ONNX Runtime session's stand-in: each row's first value, so padding is not read."""

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="x")]

    def run(self, names: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feed["x"][:, 0, 0, 0]]


SPEC = ModelSpec.from_dict(
    "reader",
    {"task": "db_text", "input": [64, 32], "max_regions": 8,
     "stages": [{"file": "x.onnx", "task": "ctc_text", "input": [64, 8], "max_batch": 4}]},
)  # fmt: skip


def frame(*widths: int) -> tuple[Image, dict[str, Any]]:
    """A blank frame with a region per width, one above the other, and its payload."""
    pixels = np.zeros((8 * len(widths) + 8, 64, 3), np.uint8)
    regions = [
        {"label": "text", "score": 0.9 - 0.01 * i, "box": [0, 8 * i, w, 8 * i + 6]}
        for i, w in enumerate(widths)
    ]
    return Image(pixels, 64, pixels.shape[0]), {"detections": regions}


def texts(payload: dict[str, Any] | Exception) -> list[str]:
    assert isinstance(payload, dict), payload
    return [r["text"] for r in payload["detections"]]


def test_crops_of_several_frames_share_batches_and_go_back_to_their_own() -> None:
    """Guards against crops batched per frame only, or a batched crop's answer merged into
    another frame's region."""
    stage = Stage("x.onnx", Widths(SPEC.stages[0].spec), [FirstColumn()])  # type: ignore[list-item]
    runs: list[tuple[int, int]] = []
    frames = [frame(10, 30), frame(20), frame(40, 50, 60)]
    out = run_stages([stage], SPEC, "detections", frames, 0, lambda _, n, f: runs.append((n, f)))
    assert [texts(p) for p in out] == [["10", "30"], ["20"], ["40", "50", "60"]]
    assert runs == [(4, 3), (2, 1)]  # narrowest first: 10 20 30 40 from three frames, then 50 60
    assert "text" not in frames[0][1]["detections"][0]  # the first stage's payload untouched


def test_a_frame_that_breaks_a_stage_costs_only_itself() -> None:
    """Guards against one frame's unreadable crop failing every frame batched with it."""
    stage = Stage("x.onnx", Widths(SPEC.stages[0].spec), [FirstColumn()])  # type: ignore[list-item]
    out = run_stages([stage], SPEC, "detections", [frame(10), frame(20, UNREADABLE), frame(30)], 0)
    assert texts(out[0]) == ["10"] and texts(out[2]) == ["30"]
    assert isinstance(out[1], ValueError)
    with pytest.raises(ValueError):  # a frame alone: its error, raised
        run_stages([stage], SPEC, "detections", [frame(UNREADABLE)], 0)
