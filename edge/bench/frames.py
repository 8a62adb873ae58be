"""The one picture every benchmark client sends, as a JPEG of the size asked for."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

#: what the drawn page for a reading model says: a label's or a notice's few lines
PAGE_LINES = (
    ("PLATFORM 4", 44), ("Next train 10:42 to Central", 26), ("Stopping at all stations", 22),
    ("Please stand behind the yellow line", 20), ("Lift out of order", 24),
    ("edge gateway 2026", 18),
)  # fmt: skip


def frame_jpeg(
    size: tuple[int, int], image: Path | None = None, quality: int = 80, reads_text: bool = False
) -> bytes:
    """`image` (any file Pillow reads) resized to `size`, or without one a drawn picture: a
    page of printed lines for a model that reads text (`reads_text`), else a test card."""
    if image:
        picture = Image.open(image).convert("RGB")
    else:
        picture = text_page(size) if reads_text else test_card(size)
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


def text_page(size: tuple[int, int]) -> Image.Image:
    """Dark lines of printed text (PAGE_LINES, Pillow's own font) on a light page, drawn at
    640x480 and scaled to `size`: what a reading model finds and reads."""
    page = Image.new("RGB", (640, 480), (236, 232, 220))
    pen = ImageDraw.Draw(page)
    y = 28
    for text, points in PAGE_LINES:
        pen.text((36, y), text, fill=(24, 24, 32), font=ImageFont.load_default(size=points))
        y += int(points * 2.2)
    return page.resize(size)
