"""What flows from a source to the gateway: `Frame`, the one-slot mailbox between the source
and the sender that keeps only the newest frame, and `fill`, the pump from one to the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from edge.client.tally import Tally


@dataclass(frozen=True)
class Frame:
    """One encoded picture (JPEG or PNG) with its index in the source and when it was read
    (`time.monotonic()`)."""

    index: int
    data: bytes
    read_at: float
    #: the decoded picture for transports that send video (WebRTC): RGB, height x width x 3
    #: uint8 (the bench's track puts an av.VideoFrame); `data` is then empty
    picture: Any = field(default=None, repr=False, compare=False)


class EndOfSource(Exception):
    """The source has no more frames."""


class LatestFrame:
    """One slot. A live source `put`s every frame and the newer one replaces the waiting one
    (which the caller counts as skipped); a file read as fast as the gateway answers waits
    with `put_when_free` instead, so that none is skipped."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ended = False
        self._filled = asyncio.Event()
        self._freed = asyncio.Event()
        self._freed.set()

    def put(self, frame: Frame) -> Frame | None:
        """Put the newest frame; returns the frame it replaced, if one was waiting."""
        old, self._frame = self._frame, frame
        self._filled.set()
        self._freed.clear()
        return old

    async def put_when_free(self, frame: Frame) -> None:
        while self._frame is not None:
            self._freed.clear()
            await self._freed.wait()
        self.put(frame)

    def end(self) -> None:
        """No more frames will come; `get` raises EndOfSource once the slot is empty."""
        self._ended = True
        self._filled.set()

    def clear(self) -> Frame | None:
        """Empty the slot; returns the frame that waited there."""
        old, self._frame = self._frame, None
        self._filled.clear()
        self._freed.set()
        return old

    @property
    def ended(self) -> bool:
        return self._ended and self._frame is None

    async def get(self) -> Frame:
        while self._frame is None:
            if self._ended:
                raise EndOfSource
            self._filled.clear()
            await self._filled.wait()
        frame = self.clear()
        assert frame is not None
        return frame


async def fill(
    mailbox: LatestFrame, frames: AsyncIterable[Any] | Iterable[Any], live: bool, tally: Tally
) -> None:
    """Every frame of the source into the mailbox, counted as read; a live one replaces the
    waiting frame (counted as skipped, `superseded`), another waits for the slot. Ends the
    mailbox when the source ends (or fails)."""
    try:
        async for item in _aiter(frames):
            frame = (
                item
                if isinstance(item, Frame)
                else Frame(tally.read, bytes(item), time.monotonic())
            )
            tally.read += 1
            if live:
                if mailbox.put(frame) is not None:
                    tally.skipped["superseded"] += 1
            else:
                await mailbox.put_when_free(frame)
    finally:
        mailbox.end()


async def _aiter(frames: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    """Frames from an async iterable, or from a plain one read on a worker thread (a camera
    or a generator may block)."""
    if isinstance(frames, AsyncIterable):
        async for f in frames:
            yield f
        return
    it = iter(frames)
    end = object()
    while True:
        f = await asyncio.to_thread(next, it, end)
        if f is end:
            return
        yield f
