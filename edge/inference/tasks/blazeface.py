"""MediaPipe BlazeFace (short range): faces with six keypoints, from a 128x128 letterboxed input.

The network scores 896 fixed anchors: a 16x16 grid with 2 anchors per cell, then an 8x8 grid
with 6 per cell, each grid ordered row by row, then by anchor. Its four outputs are, per
grid, the raw scores (N, 1) and 16 regressors (N, 16): centre offset dx, dy and size w, h in
input pixels, then six keypoints (right eye, left eye, nose, mouth, right ear, left ear) as
offsets from the anchor. Outputs are told apart by shape, not by position or name.

Overlapping detections are blended (weighted NMS) as MediaPipe does, which steadies boxes
from frame to frame. Options: `iou` (default 0.3), the overlap above which boxes are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.base import BOXES, LABELS, SCORES, Output, Task
from edge.inference.tasks.imaging import Letterbox, letterbox, normalize, sigmoid, weighted_nms
from edge.inference.tasks.options import need_fraction, read_options

#: (cells per side, anchors per cell) of each output grid, in the network's anchor order
GRIDS = ((16, 2), (8, 6))
KEYPOINTS = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")


def make_anchors(grids: Sequence[tuple[int, int]] = GRIDS) -> np.ndarray:
    """Anchor centres `(N, 2)` as fractions of the input, ordered row, column, anchor."""
    parts = []
    for cells, per_cell in grids:
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        y, x = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([x.ravel(), y.ravel()], axis=1)
        parts.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(parts)


_ANCHORS = make_anchors()
_ANCHORS.flags.writeable = False  # shared by every worker thread


class BlazeFace(Task):
    name = "blazeface"
    kind = "face_detection"
    #: each face's keypoints, in the order of KEYPOINTS, as x, y in frame pixels
    outputs = (
        BOXES,
        SCORES,
        LABELS,
        Output("keypoints", "FP32", (-1, len(KEYPOINTS), 2), "keypoints"),
    )

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = read_options(spec, {"iou": 0.3})
        need_fraction(spec, self.options, "iou")
        size = np.array([spec.input_width, spec.input_height], dtype=np.float32)
        self._anchor_px = np.tile(_ANCHORS * size, 7)  # (896, 14): anchor under each x, y
        self._anchor_px.flags.writeable = False
        self.label = spec.labels[0] if spec.labels else "face"

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        canvas, box = letterbox(image, self.spec.input_width, self.spec.input_height)
        tensor = normalize(canvas, self.spec.mean, self.spec.std, self.spec.layout)
        return tensor, box

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        raw_scores, regressors = split_outputs(outputs)
        scores = sigmoid(raw_scores.astype(np.float32))
        hits = np.flatnonzero(scores >= threshold)
        if hits.size == 0:
            return {"detections": []}
        reg = regressors[hits].astype(np.float32)
        centre = self._anchor_px[hits, 0:2] + reg[:, 0:2]
        half = reg[:, 2:4] / 2
        # values: x1, y1, x2, y2, then the six keypoints' x, y, all in input pixels
        values = np.concatenate(
            [centre - half, centre + half, self._anchor_px[hits, 2:] + reg[:, 4:16]], axis=1
        )
        merged, best = weighted_nms(values[:, :4], scores[hits], values, self.options["iou"])
        return {"detections": self._detections(merged, best, ctx)}

    def _detections(self, merged: np.ndarray, scores: np.ndarray, box: Letterbox) -> list[dict]:
        frame = box.to_frame(merged)
        box.clip_boxes(frame[:, :4])
        coords = np.round(frame.astype(np.float64), 1).tolist()
        rounded = np.round(scores, 4).tolist()
        return [
            {
                "label": self.label,
                "score": score,
                "box": row[:4],
                "keypoints": [row[i : i + 2] for i in range(4, 16, 2)],
            }
            for row, score in zip(coords, rounded, strict=True)
        ]


def split_outputs(outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The four outputs (any order) as raw scores `(896,)` and regressors `(896, 16)`.

    Scores are the (N, 1) outputs, regressors the (N, 16) ones; the larger grid comes first.
    """
    scores = sorted((o for o in outputs if o.shape[-1] == 1), key=lambda o: -o.shape[0])
    boxes = sorted((o for o in outputs if o.shape[-1] == 16), key=lambda o: -o.shape[0])
    counts = [cells * cells * per for cells, per in GRIDS]
    if [o.shape[0] for o in scores] != counts or [o.shape[0] for o in boxes] != counts:
        shapes = [tuple(o.shape) for o in outputs]
        raise ValueError(
            f"blazeface: expected outputs shaped (512, 1), (384, 1), (512, 16), (384, 16) "
            f"(batch axis removed); got {shapes}"
        )
    return np.concatenate([o.reshape(-1) for o in scores]), np.concatenate(boxes)
