"""The one picture every benchmark client sends, as a JPEG of the size asked for."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def frame_jpeg(size: tuple[int, int], image: Path | None = None, quality: int = 80) -> bytes:
    """`image` (any file Pillow reads) resized to `size`, or a drawn test card without one."""
    picture = Image.open(image).convert("RGB") if image else test_card(size)
    buf = io.BytesIO()
    picture.resize(size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_card(size: tuple[int, int]) -> Image.Image:
    """A drawn picture with some structure (a gradient, bars like lines of text, discs) so
    that JPEG decoding and the models' postprocessing have something to do; no real faces,
    so pass a photograph with `--image` for a face detector's full postprocessing."""
    w, h = size
    card = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(card)
    for row in range(6):
        y = h * (row + 1) // 8
        for col in range(4):
            x = w * col // 4 + w // 32
            draw.rectangle((x, y, x + w // 6 - row * 4, y + h // 40), fill=(20, 20, 20))
    for k in range(3):
        r = min(w, h) // (6 + 2 * k)
        cx, cy = w * (k + 1) // 4, h // 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200 - 40 * k, 150, 110 + 40 * k))
    return card
