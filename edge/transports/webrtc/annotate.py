"""The optional return track of a WebRTC session: the client's video with the boxes of the
latest result drawn on it, a tracked detection's in its track's colour (the palette every
drawing of results shares, edge.inference.tracking.track_colour), and what a reading model
read written under its box.

Bounded like the rest of the pipeline: one slot holds the newest incoming frame (a newer one
replaces it), the newest result is kept as the typed value (handed over by the session's wire,
`AnnotatingWire`, on the worker that encoded it), and drawing runs in an executor the
transport owns, on a copy of the frame's YUV planes. The incoming frame is only read, never
converted here: PyAV must not convert one frame on two threads at once, and a worker may be
converting it for the model at that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from PIL import Image, ImageColor, ImageDraw, ImageFont

from edge.codec import JsonWire
from edge.frames import Result
from edge.inference.tracking import track_colour

YUV = tuple[int, int, int]
#: an untracked box's colour in BT.601 limited-range YUV: green
BOX_YUV: YUV = (145, 54, 34)
#: the plate under a text: black
PLATE_YUV: YUV = (16, 128, 128)
BOX_THICKNESS = 2  # pixels; even, so the chroma planes get whole rows and columns


@dataclass(frozen=True, slots=True)
class Mark:
    """What is drawn for one detection: its box in the frame's pixels, its colour, its text."""

    box: tuple[int, int, int, int]
    colour: YUV = BOX_YUV
    text: str = ""


class AnnotatedTrack(MediaStreamTrack):
    """A video track whose frames are the latest offered ones with the latest boxes on."""

    kind = "video"

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self._executor = executor
        self._slot: VideoFrame | None = None
        self._result: Result | None = None
        self._fresh = asyncio.Event()

    def offer(self, frame: VideoFrame) -> None:
        """A frame that arrived; frames we cannot draw on without converting are skipped."""
        if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
            self._slot = frame
            self._fresh.set()

    def note(self, result: Result) -> None:
        """The stream's newest result; its boxes go on the frames from now on. Called from
        a worker thread: one reference replaced, nothing else touched."""
        self._result = result

    async def recv(self) -> VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            await self._fresh.wait()
            self._fresh.clear()
            frame, self._slot = self._slot, None
            if frame is not None:
                break
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, annotate, frame, self._result)

    def stop(self) -> None:
        super().stop()
        self._slot = None
        self._fresh.set()  # a pending recv() wakes up and ends


def annotate(frame: VideoFrame, result: Result | None) -> VideoFrame:
    """A new yuv420p frame: `frame`'s pixels with `result`'s marks drawn; same timestamp."""
    yuv = frame.to_ndarray()  # a plain copy of the three planes, (h * 3 / 2, w)
    for mark in marks(result, frame.width, frame.height):
        draw_box(yuv, frame.width, frame.height, mark.box, mark.colour)
        if mark.text:
            x1, _, _, y2 = mark.box
            draw_text(yuv, frame.width, frame.height, (x1, y2 + BOX_THICKNESS), mark)
    out = VideoFrame.from_ndarray(yuv, format="yuv420p")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


def marks(result: Result | None, width: int, height: int) -> Iterator[Mark]:
    """The detections of a result, their boxes scaled to a `width` x `height` frame."""
    if result is None:
        return
    sx, sy = width / max(1, result.width), height / max(1, result.height)
    for det in result.payload.get("detections", ()):
        box = det.get("box")
        if box is None or len(box) != 4:
            continue
        x1, y1, x2, y2 = box
        track_id = det.get("track_id")
        colour = BOX_YUV if track_id is None else yuv_of(track_colour(track_id))
        scaled = (round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy))
        yield Mark(scaled, colour, str(det.get("text") or ""))


@lru_cache(maxsize=16)
def yuv_of(colour: str) -> YUV:
    """A CSS colour (`#rrggbb`) in BT.601 limited-range YUV, as the frames carry it."""
    r, g, b = (c / 255.0 for c in ImageColor.getrgb(colour)[:3])
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(u), round(v)


class AnnotatingWire(JsonWire):
    """The results channel's JSON (codec's), each result also noted by the session's
    annotated track, once it has one."""

    def __init__(self) -> None:
        self.track: AnnotatedTrack | None = None

    def result(self, r: Result, /) -> str:
        text = super().result(r)  # what the client is sent: refused NaN, nothing drawn
        if self.track is not None:
            self.track.note(r)
        return text


def draw_box(
    yuv: np.ndarray, width: int, height: int, box: tuple[int, int, int, int],
    colour: YUV = BOX_YUV,
) -> None:  # fmt: skip
    """Draw the outline of `box` (x1, y1, x2, y2 in pixels) into a yuv420p array, in place."""
    t = BOX_THICKNESS
    # even corners, inside the frame: chroma is subsampled 2x2
    x1, x2 = (min(max(0, v) // 2 * 2, width - t) for v in (box[0], box[2]))
    y1, y2 = (min(max(0, v) // 2 * 2, height - t) for v in (box[1], box[3]))
    if x2 <= x1 or y2 <= y1:
        return
    for plane, sub, value in _planes(yuv, width, height, colour):
        a, b, c, d, s = x1 // sub, x2 // sub, y1 // sub, y2 // sub, t // sub
        plane[c : c + s, a : b + s] = value
        plane[d : d + s, a : b + s] = value
        plane[c : d + s, a : a + s] = value
        plane[c : d + s, b : b + s] = value


def draw_text(yuv: np.ndarray, width: int, height: int, at: tuple[int, int], mark: Mark) -> None:
    """Write `mark.text` in its colour on a black plate into a yuv420p array, in place, its
    top left at `at` (moved up or left as far as needed to stay in the frame)."""
    ink = text_mask(mark.text, max(10, height // 32))
    h, w = min(ink.shape[0], height) // 2 * 2, min(ink.shape[1], width) // 2 * 2
    if not h or not w:
        return
    x = min(max(0, at[0]), width - w) // 2 * 2
    y = min(max(0, at[1]), height - h) // 2 * 2
    ink = ink[:h, :w]
    chroma_ink = ink.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
    for (plane, sub, plate), (_, _, value) in zip(
        _planes(yuv, width, height, PLATE_YUV),
        _planes(yuv, width, height, mark.colour),
        strict=True,
    ):
        area = plane[y // sub : (y + h) // sub, x // sub : (x + w) // sub]
        area[...] = plate
        area[ink if sub == 1 else chroma_ink] = value


@lru_cache(maxsize=64)
def text_mask(text: str, size: int) -> np.ndarray:
    """Where `text` in Pillow's default font, `size` pixels tall, has ink, with a margin of
    two pixels: a boolean (h, w) array (kept: a result's texts are drawn on many frames)."""
    font = ImageFont.load_default(size)
    left, top, right, bottom = (round(v) for v in font.getbbox(text))
    canvas = Image.new("L", (right - left + 4, bottom - top + 4))
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font)
    mask = np.asarray(canvas) > 127
    mask.setflags(write=False)
    return mask


def _planes(
    yuv: np.ndarray, width: int, height: int, colour: YUV
) -> tuple[tuple[np.ndarray, int, int], ...]:
    """The Y, U and V planes of a yuv420p array as views, each with its subsampling and the
    value `colour` gives it."""
    flat = yuv.reshape(-1)  # a view: Y (h x w), then U and V (h/2 x w/2 each), back to back
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (
        (flat[:luma].reshape(height, width), 1, colour[0]),
        (flat[luma : luma + chroma].reshape(height // 2, width // 2), 2, colour[1]),
        (flat[luma + chroma :].reshape(height // 2, width // 2), 2, colour[2]),
    )
