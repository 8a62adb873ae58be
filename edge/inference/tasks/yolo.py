"""Ultralytics YOLO object detection (v5, v8, v11 exports), boxes per class.

Input: the frame letterboxed with grey (114) into the model's size, RGB / 255, NCHW, as
Ultralytics exports expect (model.toml's mean/std/layout are not used).

The first output (batch axis removed) comes in one of two layouts:
- "v5": (N, 5 + C) rows of cx, cy, w, h, objectness, then C class probabilities;
  a detection's score is objectness x its best class probability.
- "v8" (also v11): (4 + C, N), channels first: cx, cy, w, h, then C class scores, no objectness.
Option `format` ("auto", the default, "v5", "v8" or "v11") picks one; "auto" decides from the
shape and the number of labels (without labels: channels-first, fewer rows than columns, is v8).

Boxes are in input pixels; after class-aware NMS (option `iou`, default 0.45; at most
`max_detections`, default 300; over the best 1000 candidates at most) they are mapped to
frame pixels. Labels come from model.toml,
or are the class index as a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.base import BOXES, LABELS, SCORES, Task
from edge.inference.tasks.imaging import (
    Letterbox,
    cxcywh_to_xyxy,
    letterbox,
    nms_per_class,
    normalize,
)
from edge.inference.tasks.options import need_fraction, read_options

_FORMATS = ("auto", "v5", "v8", "v11")
#: at most this many above-threshold candidates, the best, go into NMS
MAX_CANDIDATES = 1000


def detect_format(shape: tuple[int, ...], classes: int) -> str:
    """ "v5" or "v8" for a 2-D output `shape`, given the number of labels (0: unknown)."""
    rows, cols = shape
    if classes:
        if rows == 4 + classes:
            return "v8"
        if cols == 5 + classes:
            return "v5"
        raise ValueError(
            f"yolo: output shape {shape} fits neither v5 (N, {5 + classes}) nor "
            f"v8 ({4 + classes}, N) for {classes} labels; check labels or set option format"
        )
    return "v8" if rows < cols else "v5"


class Yolo(Task):
    name = "yolo"
    kind = "object_detection"
    outputs = (BOXES, SCORES, LABELS)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = read_options(
            spec,
            {"iou": 0.45, "format": "auto", "max_detections": 300},
            choices={"format": _FORMATS},
        )
        need_fraction(spec, self.options, "iou")

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        canvas, box = letterbox(image, self.spec.input_width, self.spec.input_height, pad=114)
        return normalize(canvas, (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "nchw"), box

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        out = outputs[0]
        while out.ndim > 2 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 2:
            raise ValueError(f"yolo: expected a 2-D output (batch axis removed), got {out.shape}")
        fmt = self.options["format"]
        if fmt == "auto":
            fmt = detect_format(out.shape, len(self.spec.labels))
        if fmt == "v5":
            boxes, scores, classes = _decode_v5(out, threshold)
        else:
            boxes, scores, classes = _decode_v8(out, threshold)
        if scores.size == 0:
            return {"detections": []}
        if scores.size > MAX_CANDIDATES:  # bound the NMS cost on a degenerate output
            top = np.argpartition(-scores, MAX_CANDIDATES - 1)[:MAX_CANDIDATES]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        xyxy = cxcywh_to_xyxy(boxes.astype(np.float32))
        keep = nms_per_class(
            xyxy, scores, classes, self.options["iou"], self.options["max_detections"]
        )
        return {"detections": self._detections(xyxy[keep], scores[keep], classes[keep], ctx)}

    def _detections(
        self, xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, box: Letterbox
    ) -> list[dict[str, Any]]:
        frame = box.clip_boxes(box.to_frame(xyxy)).astype(np.float64)
        labels = self.spec.labels
        return [
            {
                "label": labels[c] if c < len(labels) else str(c),
                "score": round(s, 4),
                "box": coords,
            }
            for coords, s, c in zip(
                np.round(frame, 1).tolist(), scores.tolist(), classes.tolist(), strict=True
            )
        ]


def _decode_v8(out: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(4 + C, N) channels-first: candidates' cxcywh boxes, best-class scores and classes."""
    cls = out[4:]
    best = cls.argmax(axis=0)
    score = cls[best, np.arange(cls.shape[1])]
    hits = np.flatnonzero(score >= threshold)
    return out[:4, hits].T, score[hits].astype(np.float64), best[hits]


def _decode_v5(out: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(N, 5 + C) rows: candidates' cxcywh boxes, objectness x best-class scores, classes."""
    obj = out[:, 4]
    rows = np.flatnonzero(obj >= threshold)  # score <= objectness: a cheap first cut
    cls = out[rows, 5:]
    best = cls.argmax(axis=1)
    score = obj[rows] * cls[np.arange(rows.size), best]
    hits = score >= threshold
    return out[rows[hits], :4], score[hits].astype(np.float64), best[hits]
