"""PP-OCR's second and third stages, on crops of the text lines a DB detector found.

`text_angle` (PaddleOCR's text-line orientation classifier, labels "0" and "180"): a line read
upside down with a score above the threshold is turned half a circle for the next stage; it
gives no field. `ctc_text` (a CRNN/SVTR recogniser with a CTC head): the best symbol per step,
repeats merged and blanks dropped (greedy CTC, as PaddleOCR decodes), over the character
list stored in the network's own metadata under `character` (one symbol per line; the
network's first class is the blank and its last a space). It gives `text` and `confidence`
(the mean probability of the symbols kept, 0 for no text).

Both take BGR like every PP-OCR network unless `bgr = false`; a sample is the crop at the
input height, its aspect kept, at most the input width wide. The classifier pads every batch
to its input width; the recogniser to its batch's widest sample, at least `min_width`
(PaddleOCR's 320: narrower padding reads short words differently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.base import Output
from edge.inference.tasks.crops import RegionTask, line_sample
from edge.inference.tasks.options import read_options


class TextAngle(RegionTask):
    name = "text_angle"
    kind = "text_orientation"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = read_options(spec, {"bgr": True})
        self.labels = spec.labels or ("0", "180")

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        return line_sample(self, image, self.options["bgr"]), None

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        probs = outputs[0].reshape(-1)
        best = int(np.argmax(probs))
        flip = self.labels[best] == "180" and float(probs[best]) > threshold
        return {"upside_down": flip}

    def turn(self, crop: Image, fields: dict[str, Any]) -> Image:
        if not fields["upside_down"]:
            return crop
        pixels = np.ascontiguousarray(crop.pixels[::-1, ::-1])
        return Image(pixels=pixels, width=crop.width, height=crop.height)


class CTCText(RegionTask):
    name = "ctc_text"
    kind = "text_recognition"
    gives = ("text", "confidence")
    outputs = (
        Output("texts", "BYTES", (-1,), "text"),
        Output("text_confidences", "FP32", (-1,), "confidence"),
    )

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = read_options(spec, {"bgr": True, "min_width": 320})
        self.symbols: list[str] = []

    def attach(self, metadata: Mapping[str, str]) -> None:
        if "character" not in metadata:
            raise ValueError(
                f"model {self.spec.name!r}: the network has no `character` list in its "
                "metadata; ctc_text reads its symbols from there"
            )
        self.symbols = ["", *metadata["character"].splitlines(), " "]

    def batch_width(self, widths: list[int]) -> int:
        return max(min(self.options["min_width"], self.spec.input_width), *widths)

    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        return line_sample(self, image, self.options["bgr"]), None

    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        probs = outputs[0]
        if probs.ndim != 2 or probs.shape[1] != len(self.symbols):
            raise ValueError(
                f"ctc_text: expected (steps, {len(self.symbols)}) scores per crop, "
                f"got {probs.shape}"
            )
        best = probs.argmax(axis=1)
        keep = best != 0
        keep[1:] &= best[1:] != best[:-1]
        if not keep.any():
            return {"text": "", "confidence": 0.0}
        text = "".join(self.symbols[i] for i in best[keep].tolist())
        confidence = float(probs.max(axis=1)[keep].mean())
        return {"text": text, "confidence": round(confidence, 4)}
