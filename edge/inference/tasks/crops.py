"""Tasks that run on crops of regions an earlier stage found (model.toml `[[stages]]`).

A `RegionTask` declares what it takes (`takes`: the region field that locates its crop, a
polygon clockwise from the top left) and what it gives (`gives`: the fields merged into each
region; its `outputs` are the tensors they make, served after the first stage's). Its
`preprocess` turns one crop into one sample of any width; the stage runner
(edge/inference/stages.py) pads a batch's samples on the right to `batch_width`, with zeros
after normalisation, as PaddleOCR does. `turn` may hand the next stage a changed crop (the
orientation classifier turns upside-down lines).

`crop_upright` cuts a text line out of the frame: the quadrilateral warped to an upright
rectangle as long and as tall as its sides (PaddleOCR's `get_rotate_crop_image`: a
perspective warp, bicubic, edges repeated), turned a quarter when much taller than wide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from PIL import Image as PILImage

from edge.frames import Image
from edge.inference.tasks.base import Task
from edge.inference.tasks.imaging import normalize


class RegionTask(Task):
    #: the field of each region its crop is cut from
    takes: ClassVar[str] = "polygon"
    #: the fields its postprocess gives that are merged into each region
    gives: ClassVar[tuple[str, ...]] = ()

    def attach(self, metadata: Mapping[str, str]) -> None:
        """The network's own metadata (ONNX `metadata_props`), once its session is loaded."""

    def batch_width(self, widths: list[int]) -> int:
        """The width a batch of samples `widths` wide is padded to (default: the input's)."""
        return self.spec.input_width

    def turn(self, crop: Image, fields: dict[str, Any]) -> Image:
        """The crop the next stage takes, given what this stage made of it."""
        return crop


def crop_upright(image: Image, polygon: list[list[float]]) -> Image:
    """The quadrilateral `polygon` (frame pixels, clockwise from the top left) of `image` as
    an upright crop; its width/height are the crop's own pixels."""
    sx = image.pixels.shape[1] / image.width
    sy = image.pixels.shape[0] / image.height
    q = np.asarray(polygon, dtype=np.float64) * (sx, sy)
    w = max(1, int(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[2] - q[3]))))
    h = max(1, int(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2]))))
    tl, tr, br, bl = q
    quad = (*tl, *bl, *br, *tr)  # what Pillow's QUAD takes: the source's corners, this order
    src = PILImage.fromarray(image.pixels)
    pixels = np.asarray(
        src.transform((w, h), PILImage.Transform.QUAD, quad, PILImage.Resampling.BICUBIC)
    )
    if h / w >= 1.5:  # a vertical line: read it turned a quarter anticlockwise
        pixels = np.ascontiguousarray(np.rot90(pixels))
    return Image(pixels=pixels, width=pixels.shape[1], height=pixels.shape[0])


def line_sample(task: RegionTask, crop: Image, bgr: bool) -> np.ndarray:
    """A crop resized to the task's input height, its aspect kept and its width at most the
    input's, normalised to NCHW without the batch axis (C, H, width)."""
    height, widest = task.spec.input_height, task.spec.input_width
    h, w = crop.pixels.shape[:2]
    width = max(1, min(widest, math.ceil(height * w / h)))
    resized = PILImage.fromarray(crop.pixels).resize((width, height), PILImage.Resampling.BILINEAR)
    return normalize(np.asarray(resized), task.spec.mean, task.spec.std, "nchw", bgr=bgr)
