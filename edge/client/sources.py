"""Where frames come from: a camera, a video file, an RTSP/HTTP stream (all three through
PyAV), or a directory or glob of images. Reading, decoding, scaling and JPEG encoding run on
the source's own worker thread; pacing (`--fps`, a file's own rate) on the event loop.

`open_source()` opens (and so checks) the source at once, raising SourceError with one line
for a person: a missing camera, an unreadable file, a glob that matches nothing.
"""

from __future__ import annotations

import asyncio
import glob
import re
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from edge.client.errors import SourceError
from edge.client.mailbox import Frame

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_URL = re.compile(r"^(rtsps?|rtmps?|https?|udp|tcp|srt)://", re.IGNORECASE)
#: how long an RTSP/HTTP source may take to open, and to give the next packet
NETWORK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Encoding:
    size: tuple[int, int] | None = None  # (width, height); None: as the source has it
    quality: int = 85


def parse_size(text: str) -> tuple[int, int]:
    """`640x480` to (640, 480); ValueError with what is wrong otherwise."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if not m or int(m[1]) < 8 or int(m[2]) < 8:
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480 (each at least 8)")
    return int(m[1]), int(m[2])


class Source:
    """Frames from one source. `live`: it makes frames whether or not the gateway is ready
    for them (a camera, a stream, a file played at its rate), so the newest frame wins."""

    live = True

    def __init__(self, name: str, encoding: Encoding, fps: float | None) -> None:
        self.name, self.encoding, self.fps = name, encoding, fps

    def _read(self) -> tuple[np.ndarray | Image.Image, float | None] | None:
        """On the worker thread: the next picture and its time in the source (s), or None
        at the end."""
        raise NotImplementedError

    def _close(self) -> None:
        """On the worker thread: release what the source holds."""

    def _rgb(self, picture: np.ndarray | Image.Image) -> np.ndarray:
        if isinstance(picture, Image.Image):
            if self.encoding.size and picture.size != self.encoding.size:
                picture = picture.resize(self.encoding.size, Image.Resampling.BILINEAR)
            picture = np.asarray(picture.convert("RGB"))
        return picture

    def _next(self, raw: bool) -> tuple[bytes | np.ndarray, float | None] | None:
        got = self._read()
        if got is None:
            return None
        rgb = self._rgb(got[0])
        if raw:
            return rgb, got[1]
        return bytes(simplejpeg.encode_jpeg(rgb, self.encoding.quality, colorspace="RGB")), got[1]

    async def frames(self, raw: bool = False) -> AsyncIterator[Frame]:
        """Every frame, encoded (or, `raw`, as an RGB picture), paced: at `fps` when set,
        else at the file's own rate."""
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1, thread_name_prefix="edge-source")
        index = 0
        start: float | None = None
        first_t: float | None = None
        try:
            while True:
                got = await loop.run_in_executor(pool, self._next, raw)
                if got is None:
                    return
                data, t = got
                now = time.monotonic()
                if start is None:
                    start, first_t = now, t
                due = self._due(index, t, start, first_t)
                if due is not None and due > now:
                    await asyncio.sleep(due - now)
                if isinstance(data, bytes):
                    yield Frame(index, data, time.monotonic())
                else:
                    yield Frame(index, b"", time.monotonic(), picture=data)
                index += 1
        finally:
            pool.submit(self._close)
            pool.shutdown(wait=False)

    def _due(
        self, index: int, t: float | None, start: float, first_t: float | None
    ) -> float | None:
        if self.fps:
            return start + index / self.fps
        return None


class VideoSource(Source):
    """A camera, a file or a stream URL through PyAV. A file plays at its own rate unless
    `fps` is set; a camera or a stream comes at its own pace, thinned to `fps` if set."""

    def __init__(
        self,
        name: str,
        container: Any,
        kind: str,
        encoding: Encoding,
        fps: float | None,
        loop: bool = False,
    ) -> None:
        super().__init__(name, encoding, fps)
        self.kind = kind  # camera, file, stream
        self.loop = loop and kind == "file"
        self._container = container
        self._decoded: Iterator[Any] = container.decode(video=0)
        self._last_t: float | None = None
        self._offset = 0.0  # added to the times of a looped file

    def _read(self) -> tuple[np.ndarray, float | None] | None:
        import av

        while True:
            try:
                frame = next(self._decoded, None)
            except av.error.FFmpegError as e:
                raise SourceError(f"cannot read {self.name}: {e}") from None
            if frame is None:
                if not self.loop or self._last_t is None:
                    return None
                self._container.seek(0)
                self._decoded = self._container.decode(video=0)
                self._offset = self._last_t + 1 / 30
                continue
            t = None if frame.time is None else frame.time + self._offset
            if self.kind != "file" and self.fps and self._last_t is not None and t is not None:
                if t - self._last_t < 1 / self.fps:
                    continue  # thinned to fps
            self._last_t = t
            width, height = self.encoding.size or (frame.width, frame.height)
            return frame.to_ndarray(format="rgb24", width=width, height=height), t

    def _close(self) -> None:
        self._container.close()

    def _due(
        self, index: int, t: float | None, start: float, first_t: float | None
    ) -> float | None:
        if self.kind != "file":
            return None  # the camera or the stream sets the pace
        if self.fps:
            return start + index / self.fps
        if t is None or first_t is None:
            return None
        return start + (t - first_t)


class ImageSource(Source):
    """Still images in name order. Without `fps` each waits its turn (none skipped); with
    `fps` they come at that rate, like a camera."""

    def __init__(
        self, name: str, paths: list[Path], encoding: Encoding, fps: float | None, loop: bool
    ) -> None:
        super().__init__(name, encoding, fps)
        self.live = fps is not None
        self.paths, self.loop = paths, loop
        self._i = 0

    def _read(self) -> tuple[Image.Image, float | None] | None:
        if self._i >= len(self.paths):
            if not self.loop:
                return None
            self._i = 0
        path = self.paths[self._i]
        self._i += 1
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB"), None
        except (OSError, ValueError) as e:
            raise SourceError(f"cannot read image {path}: {e}") from None


def open_source(
    spec: str, encoding: Encoding, fps: float | None = None, loop: bool = False
) -> Source:
    """The source named by `spec`: a camera (`/dev/video0`, or an index like `0`), a stream
    URL (rtsp://, http://, ...), a directory or glob of images, or a video or image file."""
    if spec.isdigit():
        return _open_av(f"/dev/video{spec}", "camera", encoding, fps, loop)
    if spec.startswith("/dev/video"):
        return _open_av(spec, "camera", encoding, fps, loop)
    if _URL.match(spec):
        return _open_av(spec, "stream", encoding, fps, loop)
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {spec}")
        return ImageSource(spec, images, encoding, fps, loop)
    if glob.has_magic(spec):
        images = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        if not images:
            raise SourceError(f"no files match {spec}")
        return ImageSource(spec, images, encoding, fps, loop)
    if not path.exists():
        raise SourceError(f"no such file: {spec}")
    if not path.is_file():
        raise SourceError(f"not a file: {spec}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(spec, [path], encoding, fps, loop)
    return _open_av(spec, "file", encoding, fps, loop)


def _open_av(name: str, kind: str, encoding: Encoding, fps: float | None, loop: bool) -> Source:
    try:
        import av
    except ImportError:
        raise SourceError("reading video needs PyAV: pip install 'edge-gateway[client]'") from None
    if kind == "camera" and not Path(name).exists():
        raise SourceError(f"no camera at {name}")
    options: dict[str, str] = {}
    if name.lower().startswith("rtsp"):
        options["rtsp_transport"] = "tcp"
    try:
        container = av.open(
            name,
            format="v4l2" if kind == "camera" else None,
            options=options,
            timeout=(NETWORK_TIMEOUT_S, NETWORK_TIMEOUT_S) if kind == "stream" else None,
        )
    except (OSError, av.error.FFmpegError) as e:
        what = {"camera": "cannot open the camera", "stream": "cannot open the stream"}
        raise SourceError(f"{what.get(kind, 'cannot read')} {name}: {_one_line(e)}") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"no video in {name}")
    return VideoSource(name, container, kind, encoding, fps, loop)


def _one_line(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).splitlines()[0]
