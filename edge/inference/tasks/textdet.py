"""DB text detection (PaddleOCR's PP-OCR detectors): boxes around lines of text.

The network maps an image to a per-pixel text probability of the same size. Pixels above
`bin_thresh` are grouped into 8-connected regions; each region is scored by its mean
probability, kept when that reaches the threshold, wrapped in its minimum-area (rotated)
rectangle and grown by `unclip_ratio` (DB shrinks text regions during training; this undoes
it: each side moves out by area * ratio / perimeter). Boxes are mapped back to frame pixels.

Input: a fixed size from model.toml (a multiple of 32, so frames from many streams batch
together), letterboxed, NCHW, normalised as model.toml says. The letterbox repeats the frame's
edge pixels rather than padding with a flat colour: against black padding the network reads a
flat or busy frame as one big block of text (measured on blank frames and on skimage's
rocket, chelsea and camera photos), and with edge padding its answers match those it gives on
the unpadded frame (nearly always). PP-OCR models were trained on BGR images (OpenCV order),
so the channels are fed B, G, R unless `bgr = false`.

Options (default): bin_thresh (0.3), unclip_ratio (1.5), dilate (true: grow the mask by one
pixel right and down before grouping, which joins characters split by a hairline),
bgr (true), min_size (3.0: a region's shorter side in input pixels), max_candidates (1000).
The threshold (model.toml `threshold`, or the client's) is the minimum region score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.base import BOXES, LABELS, SCORES, Output, Task
from edge.inference.tasks.imaging import Letterbox, letterbox, normalize
from edge.inference.tasks.options import need_fraction, read_options
from edge.inference.tasks.regions import (
    clockwise_from_top_left,
    expand_rect,
    label_regions,
    min_area_rects,
)

_DEFAULTS: dict[str, Any] = {
    "bin_thresh": 0.3,
    "unclip_ratio": 1.5,
    "dilate": True,
    "bgr": True,
    "min_size": 3.0,
    "max_candidates": 1000,
}


class DBText(Task):
    name = "db_text"
    kind = "text_detection"
    #: each polygon's four corners clockwise from the top left, in frame pixels
    outputs = (BOXES, SCORES, LABELS, Output("polygons", "FP32", (-1, 4, 2), "polygon"))

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = read_options(spec, _DEFAULTS)
        need_fraction(spec, self.options, "bin_thresh")
        if spec.input_width % 32 or spec.input_height % 32:
            raise ValueError(
                f"model {spec.name!r}: input must be multiples of 32 for a DB text detector, "
                f"e.g. [640, 480]; got [{spec.input_width}, {spec.input_height}]"
            )
        if spec.layout != "nchw":
            raise ValueError(f'model {spec.name!r}: DB text detectors take layout = "nchw"')
        self.label = spec.labels[0] if spec.labels else "text"

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        canvas, box = letterbox(image, self.spec.input_width, self.spec.input_height, "edge")
        tensor = normalize(canvas, self.spec.mean, self.spec.std, "nchw", bgr=self.options["bgr"])
        return tensor, box

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        box: Letterbox = ctx
        prob = outputs[0]
        prob = prob.reshape(prob.shape[-2:])
        if prob.shape != (self.spec.input_height, self.spec.input_width):
            raise ValueError(
                f"db_text: expected a probability map the size of the input "
                f"({self.spec.input_height}, {self.spec.input_width}), got {outputs[0].shape}"
            )
        x0, y0, x1, y1 = box.content
        prob = prob[y0:y1, x0:x1]  # the padding holds no text: skip it
        regions = label_regions(prob > self.options["bin_thresh"], grow=self.options["dilate"])
        if regions.count == 0:
            return {"detections": []}
        sums, pixels = regions.sums(prob)
        scores = sums / pixels
        candidates = np.flatnonzero(scores >= threshold)
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        candidates = candidates[: self.options["max_candidates"]]
        if candidates.size == 0:
            return {"detections": []}
        # Every candidate's rotated rectangle, then the tiny ones left out, then the rest grown.
        rects, a, b = min_area_rects(regions.hulls(candidates))
        min_size = self.options["min_size"]
        grow = a * b * self.options["unclip_ratio"] / (2 * (a + b))
        short = np.minimum(a, b)
        kept = (short >= min_size) & (short + 2 * grow >= min_size + 2)
        quads = expand_rect(rects[kept], grow[kept])
        return {"detections": self._detections(quads, scores[candidates[kept]], box, (x0, y0))}

    def _detections(
        self, quads: np.ndarray, scores: np.ndarray, box: Letterbox, offset: tuple[int, int]
    ) -> list[dict[str, Any]]:
        """Quads `(n, 4, 2)` in (cropped) map pixels to frame-pixel detections, all at once."""
        if not len(quads):
            return []
        q = quads + offset
        frame = box.to_frame(q.reshape(-1, 8)).reshape(-1, 4, 2).astype(np.float64)
        np.clip(frame[..., 0], 0.0, box.frame_width, out=frame[..., 0])
        np.clip(frame[..., 1], 0.0, box.frame_height, out=frame[..., 1])
        polygons = clockwise_from_top_left(frame)
        bounds = np.concatenate([polygons.min(axis=1), polygons.max(axis=1)], axis=1)
        return [
            {"label": self.label, "score": round(score, 4), "box": b, "polygon": poly}
            for score, b, poly in zip(
                scores.tolist(),
                np.round(bounds, 1).tolist(),
                np.round(polygons, 1).tolist(),
                strict=True,
            )
        ]
