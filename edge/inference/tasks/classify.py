"""Image classification: one score per class, the best few reported.

Preprocessing resizes the frame to the input size (option `resize`: "stretch", the default,
ignores the aspect ratio; "letterbox" keeps it and pads with black; "crop" scales the shorter
side to fit and cuts the centre) and normalises with model.toml's mean/std/layout.

The first output, flattened, holds one logit (or probability) per class. Options (default):
softmax (true: turn logits into probabilities; false: report the values as they are),
top_k (5). Classes scoring below the threshold are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.base import LABELS, SCORES, Output, Task
from edge.inference.tasks.imaging import letterbox, normalize, resize, stretch
from edge.inference.tasks.options import read_options


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, stable for large values."""
    shifted = np.exp(logits - np.max(logits))
    return shifted / shifted.sum()


def center_crop(image: Image, width: int, height: int) -> np.ndarray:
    """Scale the frame so it covers `width` x `height`, then cut out the centre."""
    scale = max(width / image.width, height / image.height)
    # Crop in decoded pixels first (cheaper), then resize the crop to the input.
    ph, pw = image.pixels.shape[:2]
    crop_w = min(pw, max(1, round(width / scale * pw / image.width)))
    crop_h = min(ph, max(1, round(height / scale * ph / image.height)))
    x0, y0 = (pw - crop_w) // 2, (ph - crop_h) // 2
    return resize(image.pixels[y0 : y0 + crop_h, x0 : x0 + crop_w], width, height)


class Classification(Task):
    name = "classification"
    kind = "classification"
    rows = "classes"
    outputs = (Output("classes", "INT64", (-1,), "index"), SCORES, LABELS)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = read_options(
            spec,
            {"softmax": True, "top_k": 5, "resize": "stretch"},
            choices={"resize": ("stretch", "letterbox", "crop")},
        )
        if self.options["top_k"] < 1:
            raise ValueError(f"model {spec.name!r}: option top_k must be at least 1")

    def decode_hint(self) -> tuple[int, int]:
        """Stretch and crop fill the input along the frame's longer side too, so ask for
        enough pixels there (for frames up to 2:1); letterbox needs only the default."""
        if self.options["resize"] == "letterbox":
            return super().decode_hint()
        side = 2 * max(self.spec.input_width, self.spec.input_height)
        return (side, side)

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        w, h = self.spec.input_width, self.spec.input_height
        mode = self.options["resize"]
        if mode == "crop":
            canvas = center_crop(image, w, h)
        elif mode == "letterbox":
            canvas, _ = letterbox(image, w, h)
        else:
            canvas, _ = stretch(image, w, h)
        return normalize(canvas, self.spec.mean, self.spec.std, self.spec.layout), None

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        values = outputs[0].reshape(-1).astype(np.float64)
        scores = softmax(values) if self.options["softmax"] else values
        k = min(self.options["top_k"], scores.size)
        top = np.argsort(-scores, kind="stable")[:k]  # ties: the lower index first
        top = top[scores[top] >= threshold]
        labels = self.spec.labels
        return {
            "classes": [
                {
                    "index": i,
                    "label": labels[i] if i < len(labels) else str(i),
                    "score": round(float(scores[i]), 4),
                }
                for i in top.tolist()
            ]
        }
