"""The optional return track of a WebRTC session: the client's video with the boxes of the
latest result drawn on it.

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

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from edge.codec import JsonWire
from edge.frames import Result

#: the box colour in BT.601 limited-range YUV: green
BOX_YUV = (145, 54, 34)
BOX_THICKNESS = 2  # pixels; even, so the chroma planes get whole rows and columns


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
    """A new yuv420p frame: `frame`'s pixels with `result`'s boxes drawn; same timestamp."""
    yuv = frame.to_ndarray()  # a plain copy of the three planes, (h * 3 / 2, w)
    for box in boxes(result, frame.width, frame.height):
        draw_box(yuv, frame.width, frame.height, box)
    out = VideoFrame.from_ndarray(yuv, format="yuv420p")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


def boxes(result: Result | None, width: int, height: int) -> Iterator[tuple[int, int, int, int]]:
    """The detections' boxes of a result, scaled to a `width` x `height` frame."""
    if result is None:
        return
    sx, sy = width / max(1, result.width), height / max(1, result.height)
    for det in result.payload.get("detections", ()):
        box = det.get("box")
        if box is not None and len(box) == 4:
            x1, y1, x2, y2 = box
            yield round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)


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


def draw_box(yuv: np.ndarray, width: int, height: int, box: tuple[int, int, int, int]) -> None:
    """Draw the outline of `box` (x1, y1, x2, y2 in pixels) into a yuv420p array, in place."""
    t = BOX_THICKNESS
    # even corners, inside the frame: chroma is subsampled 2x2
    x1, x2 = (min(max(0, v) // 2 * 2, width - t) for v in (box[0], box[2]))
    y1, y2 = (min(max(0, v) // 2 * 2, height - t) for v in (box[1], box[3]))
    if x2 <= x1 or y2 <= y1:
        return
    flat = yuv.reshape(-1)  # a view: Y (h x w), then U and V (h/2 x w/2 each), back to back
    luma, chroma = width * height, (width // 2) * (height // 2)
    planes = (
        (flat[:luma].reshape(height, width), 1, BOX_YUV[0]),
        (flat[luma : luma + chroma].reshape(height // 2, width // 2), 2, BOX_YUV[1]),
        (flat[luma + chroma :].reshape(height // 2, width // 2), 2, BOX_YUV[2]),
    )
    for plane, sub, value in planes:
        a, b, c, d, s = x1 // sub, x2 // sub, y1 // sub, y2 // sub, t // sub
        plane[c : c + s, a : b + s] = value
        plane[d : d + s, a : b + s] = value
        plane[c : d + s, a : a + s] = value
        plane[c : d + s, b : b + s] = value
