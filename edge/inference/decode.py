"""Encoded bytes to RGB pixels, checked before any pixel is decoded.

Only JPEG and PNG are accepted, recognised by their magic bytes. Dimensions are read from the
header first, so a decompression bomb is refused before it allocates anything. JPEG decodes
with libjpeg-turbo (simplejpeg) at the smallest DCT scale that still covers what the model
needs, which is several times faster than a full decode for small model inputs. A frame a
transport already decoded (a `Picture`) is scaled the same way, by its own converter.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import simplejpeg
from PIL import Image as PILImage

from edge.frames import FrameError, Image, Picture

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"

PILImage.MAX_IMAGE_PIXELS = None  # we check dimensions ourselves, with our own limit


def decode(
    data: bytes | Picture, fit: tuple[int, int], max_pixels: int, max_png_pixels: int | None = None
) -> Image:
    """Decode `data`, possibly at reduced scale, keeping enough pixels to cover `fit` (w, h).

    PNG always decodes at full size (no DCT scaling), so it may have its own, lower limit."""
    if not isinstance(data, bytes):
        return _convert_picture(data, fit, max_pixels)
    if data.startswith(_JPEG):
        return _decode_jpeg(data, fit, max_pixels)
    if data.startswith(_PNG):
        limit = max_pixels if max_png_pixels is None else min(max_pixels, max_png_pixels)
        return _decode_png(data, limit)
    raise FrameError("bad_frame", "not a JPEG or PNG image (unrecognised leading bytes)")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise FrameError("bad_frame", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise FrameError(
            "bad_frame", f"image is {width}x{height}, more than the {max_pixels} pixels allowed"
        )


def _decode_jpeg(data: bytes, fit: tuple[int, int], max_pixels: int) -> Image:
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        raise FrameError("bad_frame", f"JPEG header unreadable: {e}") from None
    _check_size(width, height, max_pixels)
    scale = min(1.0, min(fit[0] / width, fit[1] / height))
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=max(1, math.ceil(width * scale)),
            min_height=max(1, math.ceil(height * scale)),
        )
    except ValueError as e:
        raise FrameError("bad_frame", f"JPEG data corrupt: {e}") from None
    return Image(pixels=pixels, width=width, height=height)


def _convert_picture(picture: Picture, fit: tuple[int, int], max_pixels: int) -> Image:
    width, height = picture.width, picture.height
    _check_size(width, height, max_pixels)
    scale = min(1.0, fit[0] / width, fit[1] / height)
    try:
        pixels = picture.rgb(max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
    except ValueError as e:
        raise FrameError("bad_frame", f"video frame not convertible: {e}") from None
    return Image(pixels=pixels, width=width, height=height)


def _decode_png(data: bytes, max_pixels: int) -> Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = PILImage.open(io.BytesIO(data), formats=["PNG"])
            width, height = im.size
            _check_size(width, height, max_pixels)
            pixels = np.asarray(im.convert("RGB"))
    except FrameError:
        raise
    except Exception as e:  # Pillow raises IndexError, struct.error... on malformed chunks too
        raise FrameError("bad_frame", f"PNG data corrupt: {e or type(e).__name__}") from None
    return Image(pixels=pixels, width=width, height=height)
