"""What crosses a WebRTC peer connection: decoded video frames in, result messages out.

`VideoPicture` hands a decoded `av.VideoFrame` to a worker, which converts it to RGB only if
the frame is served. `ChannelWriter` writes results to the `results` DataChannel and holds the
stream's sender back while the channel's `bufferedAmount` is high, so a slow client fills the
stream's bounded outbox (and gets `overload` drops) rather than an SCTP queue without bound.
"""

from __future__ import annotations

import asyncio

import av
import numpy as np
from aiortc import RTCDataChannel

#: the sender waits while more than HIGH bytes are queued on the channel, until it is under LOW
CHANNEL_HIGH_BYTES = 256 * 1024
CHANNEL_LOW_BYTES = 64 * 1024


class VideoPicture:
    """A decoded `av.VideoFrame` as an `edge.frames.Picture`.

    Only the worker that serves the frame converts it: PyAV keeps one scaler per frame, and two
    threads converting one frame at once hang (seen with PyAV 18).
    """

    __slots__ = ("_frame", "height", "width")

    def __init__(self, frame: av.VideoFrame) -> None:
        self._frame = frame
        self.width: int = frame.width
        self.height: int = frame.height

    def rgb(self, width: int, height: int) -> np.ndarray:
        try:
            out = self._frame.reformat(width, height, "rgb24", interpolation="BILINEAR")
        except av.FFmpegError as e:
            raise ValueError(str(e)) from None
        return out.to_ndarray()


class ChannelWriter:
    """Writes text to the `results` channel, one message at a time, and returns only once the
    channel holds at most `high` bytes not yet sent (else it waits for `bufferedamountlow`).

    Until a channel is attached and `ready` is set, writes wait; once `ready` is set with no
    channel (the client never opened one), they are dropped: nobody is there to read them.
    """

    def __init__(self, high: int = CHANNEL_HIGH_BYTES, low: int = CHANNEL_LOW_BYTES) -> None:
        self.channel: RTCDataChannel | None = None
        self.ready = asyncio.Event()
        self._high, self._low = high, low
        self._below = asyncio.Event()

    def attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.bufferedAmountLowThreshold = self._low
        channel.on("bufferedamountlow", self._below.set)

    def wake(self) -> None:
        """Let a waiting write look again (the channel closed)."""
        self._below.set()

    @property
    def open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    async def send(self, text: str) -> None:
        await self.ready.wait()
        channel = self.channel
        if channel is None:
            return
        if channel.readyState != "open":
            raise ConnectionError("the results channel is closed")
        channel.send(text)
        while channel.bufferedAmount > self._high:
            self._below.clear()
            await self._below.wait()
            if channel.readyState != "open":
                raise ConnectionError("the results channel is closed")
