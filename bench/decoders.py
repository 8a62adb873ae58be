"""JPEG decoder benchmark: which well-kept decoder the gateway should use, measured here.

Decodes the same 640x480 JPEG at full size and at the reduced DCT scale BlazeFace needs
(covering 128 x 96), with simplejpeg, Pillow (draft mode for the reduced scale) and
PyTurboJPEG when its libturbojpeg is installed (`apt-get install libturbojpeg0`).

    python bench/decoders.py
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.imagedata import sample_image  # noqa: E402


def per_call_ms(fn: Callable[[], object], seconds: float = 2.0) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    im = Image.open(sample_image("astronaut.png")).convert("RGB").resize((640, 480))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    data = buf.getvalue()

    def pil(draft: bool) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        if draft:
            img.draft("RGB", (128, 96))
        return np.asarray(img.convert("RGB"))

    rows = {
        "simplejpeg full": lambda: simplejpeg.decode_jpeg(data, colorspace="RGB"),
        "simplejpeg reduced": lambda: simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=128, min_height=96
        ),
        "Pillow full": lambda: pil(False),
        "Pillow draft": lambda: pil(True),
    }
    try:
        from turbojpeg import TurboJPEG

        tj = TurboJPEG()
        rows["PyTurboJPEG full"] = lambda: tj.decode(data)
        rows["PyTurboJPEG 1/4"] = lambda: tj.decode(data, scaling_factor=(1, 4))
    except (ImportError, RuntimeError) as e:
        print(f"PyTurboJPEG not measured: {e}".splitlines()[0])
    print(f"640x480 JPEG, {len(data)} bytes")
    for name, fn in rows.items():
        print(f"  {name:20s} {per_call_ms(fn):6.3f} ms")


if __name__ == "__main__":
    main()
