"""Helpers for the browser tests: a fake camera made from a real photo, Debian's Chromium driven
by Playwright (never a downloaded browser), and the gateway on a port that survives a restart."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from aiohttp import web
from PIL import Image
from playwright.async_api import Browser, async_playwright

from edge.process.app import create_app
from edge.settings import Settings
from tests.conftest import wait_ready
from tests.imagedata import sample_image

CHROMIUM = Path("/usr/bin/chromium")
CAMERA_W, CAMERA_H = 640, 480
#: the astronaut's face in astronaut.png (512 x 512), x1, y1, x2, y2, checked by eye
ASTRONAUT_FACE = (180, 83, 274, 177)
#: astronaut.png is scaled to 480 x 480 and centred on a grey 640 x 480 frame
_SCALE, _PAD = CAMERA_H / 512, (CAMERA_W - CAMERA_H) // 2
FACE_IN_CAMERA = (
    ASTRONAUT_FACE[0] * _SCALE + _PAD,
    ASTRONAUT_FACE[1] * _SCALE,
    ASTRONAUT_FACE[2] * _SCALE + _PAD,
    ASTRONAUT_FACE[3] * _SCALE,
)


def camera_frame() -> np.ndarray:
    """The fake camera's picture: 640 x 480 RGB with the astronaut's face at FACE_IN_CAMERA."""
    photo = Image.open(sample_image("astronaut.png")).convert("RGB").resize((CAMERA_H, CAMERA_H))
    frame = Image.new("RGB", (CAMERA_W, CAMERA_H), (96, 96, 96))
    frame.paste(photo, (_PAD, 0))
    return np.asarray(frame)


def i420(rgb: np.ndarray) -> bytes:
    """RGB to I420 planes (BT.601, studio range, chroma averaged over 2 x 2 pixels)."""
    h, w, _ = rgb.shape
    f = rgb.astype(np.float32) / 255.0
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    planes = [y] + [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 30) -> Path:
    """A YUV4MPEG2 file Chromium plays (in a loop) as its fake camera."""
    h, w, _ = rgb.shape
    planes = i420(rgb)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + planes)
    return path


def chromium_args(y4m: Path | None) -> list[str]:
    """Chromium's flags; with `y4m` a camera that shows it and is allowed without asking,
    without one no camera at all."""
    camera = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
    ]
    return [
        *(camera if y4m else []),
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]


def chromium_path() -> str:
    if not CHROMIUM.is_file():
        raise RuntimeError(
            f"{CHROMIUM} is missing: run `make browser` "
            "(apt-get install --no-install-recommends chromium); never `playwright install`"
        )
    return str(CHROMIUM)


@contextlib.asynccontextmanager
async def chromium(y4m: Path | None) -> AsyncIterator[Browser]:
    """Headless Debian Chromium whose camera shows `y4m`, or that has no camera (None)."""
    executable = chromium_path()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=executable, headless=True, args=chromium_args(y4m)
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def serving_on(settings: Settings, port: int) -> AsyncIterator[web.Application]:
    """The real app on 127.0.0.1:`port`, ready; a second one can take the same port later.
    Leaving runs the gateway's own shutdown (drain: goaway, close 1001)."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        yield app
    finally:
        await runner.cleanup()


#: set (to 1) to refresh the committed screenshot on purpose: `make screenshot`
REFRESH_SCREENSHOT = "EDGE_REFRESH_SCREENSHOT"


def publish(screenshot: Path, docs: Path) -> None:
    """Copy the screenshot the README shows, only when asked (REFRESH_SCREENSHOT): a test run
    leaves its screenshots in artifacts/ and changes no tracked file."""
    if os.environ.get(REFRESH_SCREENSHOT) != "1":
        return
    docs.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, docs)
