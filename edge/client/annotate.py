"""`edge stream --annotate out.mp4`: each frame that got a result, with its boxes drawn, into a
video (PyAV), so a person can see what the model saw. Decoding, drawing and encoding run on
the writer's own thread behind a bounded queue; when it falls behind, frames are left out of
the video and counted, never queued without bound."""

from __future__ import annotations

import io
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageDraw

from edge.client.errors import SourceError
from edge.client.replies import Detection, Result
from edge.inference.tracking import track_colour

#: results waiting for the writer thread
QUEUE = 32
_STOP = object()
COLOR = (255, 64, 32)


def colour(d: Detection) -> str | tuple[int, int, int]:
    """A tracked detection's track colour (edge.inference.tracking.track_colour); COLOR
    otherwise."""
    return COLOR if d.track_id is None else track_colour(d.track_id)


def draw(image: Image.Image, result: Result) -> Image.Image:
    """The picture with the result's boxes, keypoints and polygons drawn over it; a tracked
    detection in its track's colour, its ID beside the label; the text a region reads
    under its box."""
    out = image.convert("RGB")
    pen = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 240))
    for d in result.detections:
        ink = colour(d)
        if d.box is not None:
            pen.rectangle(d.box, outline=ink, width=width)
            track = "" if d.track_id is None else f" #{d.track_id}"
            text = f"{d.label}{track} {d.score:.2f}"
            pen.text((d.box[0] + width, d.box[1] + width), text, fill=ink)
            if d.text:  # what a reading model read, under its box
                pen.text((d.box[0], d.box[3] + width), d.text, fill=ink)
        for x, y in d.keypoints:
            pen.ellipse((x - width, y - width, x + width, y + width), fill=ink)
        if len(d.polygon) >= 3:
            pen.polygon(d.polygon, outline=ink, width=width)
    if result.classes:
        best = result.classes[0]
        pen.text((width * 2, width * 2), f"{best.label} {best.score:.2f}", fill=COLOR)
    return out


class Annotator:
    """Owns the output file and its writer thread: `start()`, `put()` results, `close()`."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            self._container = av.open(str(path), "w")
        except (OSError, av.error.FFmpegError) as e:
            raise SourceError(f"cannot write {path}: {e}") from None
        self._queue: queue.Queue[object] = queue.Queue(QUEUE)
        self._thread = threading.Thread(target=self._run, name="edge-annotate", daemon=True)
        self._stream: Any = None
        self._first_at: float | None = None
        self._last_pts = -1
        self.written = 0
        self.left_out = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def put(self, result: Result, at: float) -> None:
        """Hand a result (with its image) to the writer; `at` is when its frame was read."""
        if result.image is None:
            return
        try:
            self._queue.put_nowait((result, at))
        except queue.Full:
            self.left_out += 1

    def close(self) -> None:
        """Finish the video; blocks until the writer is done (call it off the event loop)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        else:
            self._container.close()

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                result, at = cast(tuple[Result, float], item)
                self._write(result, at)
            self._flush()
        except Exception as e:  # kept and reported by the owner; the stream goes on
            self.error = e
        finally:
            self._container.close()

    def _write(self, result: Result, at: float) -> None:
        import av

        assert result.image is not None
        with Image.open(io.BytesIO(result.image)) as im:
            picture = draw(im, result)
        if self._stream is None:
            stream: Any = self._container.add_stream(_codec(), rate=30)
            stream.width, stream.height = picture.size[0] // 2 * 2, picture.size[1] // 2 * 2
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1, 1000)
            self._stream, self._first_at = stream, at
        stream = self._stream
        size = (stream.width, stream.height)
        if picture.size != size:
            picture = picture.resize(size)
        frame = av.VideoFrame.from_image(picture)
        assert self._first_at is not None
        pts = max(self._last_pts + 1, round((at - self._first_at) * 1000))
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        self._last_pts = pts
        for packet in stream.encode(frame):
            self._container.mux(packet)
        self.written += 1

    def _flush(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"
