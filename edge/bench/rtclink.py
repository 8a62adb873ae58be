"""The WebRTC transport's client for the bench: frames go out as a video track (VP8 over
RTP, as a camera's would), replies come back on the `results` DataChannel in the WebSocket's
JSON schema (docs/webrtc.md). The track hands the encoder only the newest frame; a frame
replaced before the encoder took it is counted in `skipped`."""

from __future__ import annotations

import asyncio
import fractions
import io
import json
import time
from collections import deque
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from PIL import Image

from edge.bench.link import EndOfStream, Link
from edge.client.mailbox import EndOfSource, Frame, LatestFrame

#: how long ICE and DTLS on loopback may take before the hello arrives
CONNECT_WITHIN_S = 60.0
CLOCK = fractions.Fraction(1, 90_000)


class LatestFrameTrack(MediaStreamTrack):
    """A camera whose next picture is the newest one offered: the client's one-slot mailbox
    (edge.client.mailbox), no queue."""

    kind = "video"

    def __init__(self, link: RtcLink) -> None:
        super().__init__()
        self.link = link
        self.mailbox = LatestFrame()
        self.t0 = time.monotonic()

    def offer(self, frame: VideoFrame) -> None:
        replaced = self.mailbox.put(Frame(0, b"", time.monotonic(), picture=frame))
        self.link.skipped += replaced is not None

    async def recv(self) -> VideoFrame:
        try:
            frame: VideoFrame = (await self.mailbox.get()).picture
        except EndOfSource:
            raise MediaStreamError from None
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        frame.pts, frame.time_base = round((now - self.t0) * 90_000), CLOCK
        self.link.sent_at.append(now)  # the server's seq is the frame's index on the track
        return frame

    def stop(self) -> None:
        super().stop()
        self.mailbox.end()


class RtcLink(Link):
    def __init__(self, pc: RTCPeerConnection) -> None:
        super().__init__()
        self.pc = pc
        self.track = LatestFrameTrack(self)
        # one reply per frame the server decoded, and one reader takes them as they come
        self.replies: deque[dict[str, Any] | None] = deque()
        self.arrived = asyncio.Event()
        self.jpeg: bytes = b""
        self.yuv: np.ndarray | None = None

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, model: str) -> Link:
        link = cls(RTCPeerConnection(RTCConfiguration(iceServers=[])))
        try:
            await link._connect(http, url, model)
        except BaseException:
            await link.close()
            raise
        return link

    async def _connect(self, http: aiohttp.ClientSession, url: str, model: str) -> None:
        self.pc.addTrack(self.track)
        channel = self.pc.createDataChannel("results")
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._on_message(None))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer", "model": model}
        async with http.post(url + "/v1/webrtc/offer", json=offer) as r:
            if r.status != 200:
                raise ConnectionError(f"{url}: offer refused, {r.status} {await r.text()}")
            answer = await r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        hello = await asyncio.wait_for(self.recv(), CONNECT_WITHIN_S)
        if hello.get("type") != "hello":
            raise ConnectionError(f"{url}: no hello but {hello}")

    def _on_message(self, text: str | bytes | None) -> None:
        self.replies.append(None if text is None else json.loads(text))
        self.arrived.set()

    async def send(self, frame: bytes) -> None:
        if frame is not self.jpeg:  # one picture, converted once
            rgb = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
            video = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            self.yuv = video.to_ndarray()
            self.jpeg = frame
        assert self.yuv is not None
        self.track.offer(VideoFrame.from_ndarray(self.yuv, format="yuv420p"))

    async def recv(self) -> dict[str, Any]:
        while not self.replies:
            self.arrived.clear()
            await self.arrived.wait()
        reply = self.replies.popleft()
        if reply is None:
            self.replies.appendleft(None)  # stays closed
            raise EndOfStream
        return reply

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()
        self._on_message(None)
