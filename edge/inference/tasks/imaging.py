"""Pixel and box helpers the task plugins share: letterbox, normalize, NMS.

Everything here is a pure function of its arguments (thread-safe) and vectorised with numpy.
Resizing uses Pillow's bilinear filter: on the frames we serve it is several times faster than
a numpy bilinear and it antialiases when shrinking (measured: 240x180 -> 128x96 in ~0.2 ms).

Coordinates: boxes are `[x1, y1, x2, y2]` float arrays in continuous pixel units, where pixel
`i` covers `[i, i + 1)`. A `Letterbox` maps points from the network's input pixels back into
the pixels of the frame as the client sent it (`Image.width` x `Image.height`), whatever scale
the frame was decoded at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from edge.frames import Image


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where a frame landed inside the network input, to map results back to frame pixels.

    The frame occupies `[pad_x, pad_x + frame_width * scale_x)` horizontally in the input
    (likewise vertically); the rest is padding.
    """

    scale_x: float  # input pixels per frame pixel
    scale_y: float
    pad_x: int  # input pixels of padding on the left / top
    pad_y: int
    frame_width: int
    frame_height: int

    @property
    def content(self) -> tuple[int, int, int, int]:
        """The `(x1, y1, x2, y2)` input-pixel rectangle the frame covers, padding excluded."""
        return (
            self.pad_x,
            self.pad_y,
            self.pad_x + round(self.frame_width * self.scale_x),
            self.pad_y + round(self.frame_height * self.scale_y),
        )

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Map input-pixel coordinates `(..., 2k)` laid out x, y, x, y... into frame pixels."""
        out = np.array(points, dtype=np.float32, copy=True)
        out[..., 0::2] = (out[..., 0::2] - self.pad_x) / self.scale_x
        out[..., 1::2] = (out[..., 1::2] - self.pad_y) / self.scale_y
        return out

    def clip_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Clip frame-pixel `[x1, y1, x2, y2]` boxes `(N, 4)` to the frame, in place."""
        np.clip(boxes[:, 0::2], 0.0, self.frame_width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0.0, self.frame_height, out=boxes[:, 1::2])
        return boxes


def resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of HxWx3 uint8 pixels to `height` x `width` (no copy if already that)."""
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    image = PILImage.fromarray(np.ascontiguousarray(pixels))
    return np.asarray(image.resize((width, height), PILImage.Resampling.BILINEAR))


def letterbox(
    image: Image, width: int, height: int, pad: int | str = 0, center: bool = True
) -> tuple[np.ndarray, Letterbox]:
    """Fit the frame into `width` x `height` keeping its aspect ratio; pad the rest.

    `pad` is a grey level (0..255), or "edge" to repeat the frame's outermost pixels outwards,
    which leaves no artificial border for a network to mistake for an object.
    The fit is computed from the frame's real size (`image.width`/`image.height`), not from
    `image.pixels`, which may have been decoded smaller. Returns the HxWx3 uint8 canvas and the
    mapping back to frame pixels.
    """
    if pad != "edge" and not (isinstance(pad, int) and 0 <= pad <= 255):
        raise ValueError(f'pad must be a grey level 0..255 or "edge", not {pad!r}')
    scale = min(width / image.width, height / image.height)
    new_w = min(width, max(1, round(image.width * scale)))
    new_h = min(height, max(1, round(image.height * scale)))
    pad_x = (width - new_w) // 2 if center else 0
    pad_y = (height - new_h) // 2 if center else 0
    content = resize(image.pixels, new_w, new_h)
    if new_w == width and new_h == height:
        canvas = content
    elif pad == "edge":
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        x1, y1 = pad_x + new_w, pad_y + new_h
        canvas[pad_y:y1, pad_x:x1] = content
        canvas[pad_y:y1, :pad_x] = content[:, :1]
        canvas[pad_y:y1, x1:] = content[:, -1:]
        canvas[:pad_y] = canvas[pad_y]
        canvas[y1:] = canvas[y1 - 1]
    else:
        canvas = np.full((height, width, 3), pad, dtype=np.uint8)
        canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = content
    box = Letterbox(
        scale_x=new_w / image.width,
        scale_y=new_h / image.height,
        pad_x=pad_x,
        pad_y=pad_y,
        frame_width=image.width,
        frame_height=image.height,
    )
    return canvas, box


def stretch(image: Image, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the frame to exactly `width` x `height`, ignoring its aspect ratio."""
    canvas = resize(image.pixels, width, height)
    box = Letterbox(width / image.width, height / image.height, 0, 0, image.width, image.height)
    return canvas, box


def normalize(
    pixels: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    layout: str = "nhwc",
    bgr: bool = False,
) -> np.ndarray:
    """`(pixel - mean) / std` per RGB channel, as float32 in `layout` ("nhwc" or "nchw").

    `mean`/`std` are given for R, G, B in pixel units (0..255). With `bgr` the output channels
    are ordered B, G, R (each still normalised with its own channel's mean/std).
    """
    if layout not in ("nhwc", "nchw"):
        raise ValueError(f'layout must be "nhwc" or "nchw", not {layout!r}')
    h, w = pixels.shape[:2]
    order = (2, 1, 0) if bgr else (0, 1, 2)
    if layout == "nchw":
        # Two numpy calls over the channel-first view, each walking whole rows: as fast as one
        # channel at a time, and a third of the GIL releases a worker must take back (each
        # can cost a switch interval when other threads are busy: bench/gil.py).
        m = np.array([mean[c] for c in order], dtype=np.float32)[:, None, None]
        k = np.array([1.0 / std[c] for c in order], dtype=np.float32)[:, None, None]
        out = np.empty((3, h, w), dtype=np.float32)
        src = pixels[..., ::-1] if bgr else pixels  # (2, 1, 0): a view, not a copy
        np.subtract(src.transpose(2, 0, 1), m, out=out, dtype=np.float32)
        out *= k
        return out
    out = np.empty((h, w, 3), dtype=np.float32)
    # One channel at a time: about twice as fast as broadcasting over the last axis.
    for i, c in enumerate(order):
        plane = out[..., i]
        np.subtract(pixels[..., c], np.float32(mean[c]), out=plane, dtype=np.float32)
        plane *= np.float32(1.0 / std[c])
    return out


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one `[x1, y1, x2, y2]` box against `(N, 4)` boxes; 0 where the union is empty."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    areas = widths * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_out: int = 300) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    A box is dropped when its IoU with an already kept, higher-scoring box exceeds `iou`.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k], dtype=np.float64) for k in range(4))
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size and len(keep) < max_out:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        w = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
        h = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.intp)


def nms_per_class(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_out: int = 300
) -> np.ndarray:
    """Class-aware NMS: boxes only suppress boxes of the same class. Indices, best first."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.intp)
    # Shift each class into its own region of the plane so classes never overlap.
    span = float(np.max(boxes) - np.min(boxes)) + 1.0
    shifted = boxes + (classes.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou, max_out)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, values: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blending NMS (MediaPipe's "weighted"): merge each cluster instead of dropping it.

    The best remaining box absorbs every remaining box whose IoU with it exceeds `iou`; the
    cluster's `values` rows (N, K) (e.g. box corners and keypoints) are averaged weighted by
    score, and the cluster's score is its best score. Returns (merged values, scores), best
    first.
    """
    order = np.argsort(-scores, kind="stable")
    merged: list[np.ndarray] = []
    best_scores: list[float] = []
    while order.size:
        best = order[0]
        overlap = iou_one_to_many(boxes[best], boxes[order]) > iou
        overlap[0] = True
        cluster = order[overlap]
        weights = scores[cluster].astype(np.float64)
        total = weights.sum()
        if total > 0:
            merged.append(weights @ values[cluster] / total)
        else:
            merged.append(values[cluster].mean(axis=0))
        best_scores.append(float(scores[best]))
        order = order[~overlap]
    if not merged:
        return np.zeros((0, values.shape[1]), dtype=np.float64), np.zeros(0, dtype=np.float64)
    return np.stack(merged), np.asarray(best_scores, dtype=np.float64)


def sigmoid(raw: np.ndarray) -> np.ndarray:
    """Logistic function, clipped so extreme logits neither overflow nor warn."""
    return 1.0 / (1.0 + np.exp(-np.clip(raw, -80.0, 80.0)))


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """`(N, 4)` centre/size boxes to corner boxes."""
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)
