"""`edge stream --transport webrtc`: the source as a video track, replies on the `results`
DataChannel (docs/webrtc.md), with the WebSocket session's rules for refusals, backoff, goaway
and staleness (edge.client.session).

There are no credits on WebRTC: the track hands the encoder the newest frame of the one-slot
mailbox whenever aiortc asks for one, so frames made in between are skipped at the source like
on the WebSocket. A reply's `seq` counts the frames the gateway decoded, which the encoder or
the network may have skipped, so replies carry no source `frame` index and no latency, and
`unanswered` in the books counts frames lost on the way (docs/client.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from edge.client import replies
from edge.client.connection import HELLO_TIMEOUT_S, host, refusal, tls_context, why
from edge.client.errors import Refused, Unreachable
from edge.client.mailbox import EndOfSource, Frame, LatestFrame
from edge.client.session import Session, unreadable

#: replies received on the channel and not yet read; beyond it they are counted and dropped
INBOX = 256
#: a peer connection "disconnected" this long counts as lost (as in the dashboard)
LOST_AFTER_S = 5.0
#: how often the gateway is asked for its count of frames taken, once the source has ended
SETTLE_POLL_S = 0.5
_CLOCK = 90_000


class SourceTrack(MediaStreamTrack):
    """A video track that gives aiortc the newest frame of the mailbox whenever it asks."""

    kind = "video"

    def __init__(self, mailbox: LatestFrame, on_sent: Any) -> None:
        super().__init__()
        self._mailbox, self._on_sent = mailbox, on_sent
        self._t0: float | None = None
        self._pts = -1
        self.finished = asyncio.Event()  # the source has ended

    async def recv(self) -> VideoFrame:
        try:
            frame = await self._mailbox.get()
        except EndOfSource:
            self.finished.set()
            raise MediaStreamError from None
        if self.readyState != "live":
            raise MediaStreamError
        video = VideoFrame.from_ndarray(frame.picture, format="rgb24")
        if self._t0 is None:
            self._t0 = frame.read_at
        self._pts = max(self._pts + 1, round((frame.read_at - self._t0) * _CLOCK))
        video.pts, video.time_base = self._pts, Fraction(1, _CLOCK)
        self._on_sent(frame)
        return video


@dataclass
class RtcConnection:
    pc: RTCPeerConnection
    channel: RTCDataChannel
    track: SourceTrack
    hello: replies.Hello
    url: str
    number: int
    inbox: asyncio.Queue[str]
    ended: asyncio.Event

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()


class RtcSession(Session):
    """A Session over WebRTC. The first connection is made by `stream()` (its track needs the
    source), so errors connecting are raised from there rather than on entry."""

    def __init__(self, urls: Any, **kw: Any) -> None:
        super().__init__(urls, **kw)
        self._received = 0  # the gateway's count of frames taken (its stats), this connection
        self._answers = 0
        self._stats = asyncio.Event()  # a stats reply came

    async def open(self, connect: bool = True) -> None:
        await super().open(connect=False)

    def stream(
        self, frames: AsyncIterable[Any] | Iterable[Any], *, live: bool = True
    ) -> AsyncGenerator[replies.Reply, None]:
        """As Session.stream, with `Frame`s that carry a `picture`; always live."""
        return super().stream(frames, live=True)

    def _sent(self, frame: Frame) -> None:
        self.tally.sent += 1

    async def _open(self, url: str, number: int, mailbox: LatestFrame | None) -> Any:
        assert mailbox is not None and self._http is not None
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        inbox: asyncio.Queue[str] = asyncio.Queue(INBOX)
        ended = asyncio.Event()
        track = SourceTrack(mailbox, self._sent)
        pc.addTrack(track)
        channel = pc.createDataChannel("results")
        lost: list[asyncio.TimerHandle] = []

        def on_message(text: Any) -> None:
            try:
                inbox.put_nowait(text if isinstance(text, str) else text.decode())
            except asyncio.QueueFull:
                self.tally.unread += 1  # replies the caller did not keep up with

        def on_state() -> None:
            for h in lost:
                h.cancel()
            state = pc.connectionState
            if state in ("failed", "closed"):
                ended.set()
            elif state == "disconnected":
                lost.append(asyncio.get_running_loop().call_later(LOST_AFTER_S, ended.set))

        channel.on("message", on_message)
        channel.on("close", ended.set)
        pc.on("connectionstatechange", on_state)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await self._offer(url, pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            hello = await self._hello(url, inbox, ended, number)
            if self.config:
                channel.send(json.dumps({"type": "config", **self.config}))
        except BaseException:
            track.stop()
            await pc.close()
            raise
        self._received = self._answers = 0
        return RtcConnection(pc, channel, track, hello, url, number, inbox, ended)

    async def _offer(self, url: str, sdp: str) -> dict[str, Any]:
        assert self._http is not None
        offer_url, model = _offer_url(url)
        body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
        if model:
            body["model"] = model
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        tls = tls_context(self.ca) if offer_url.startswith("https:") else False
        try:
            async with self._http.post(offer_url, json=body, headers=headers, ssl=tls) as r:
                if r.status != 200:
                    raise refusal(r.status, r.reason or "", r.headers)
                answer: dict[str, Any] = await r.json()
                return answer
        except Refused:
            raise
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as e:
            raise Unreachable(f"cannot reach the gateway at {host(url)}: {why(e)}") from None

    async def _hello(
        self, url: str, inbox: asyncio.Queue[str], ended: asyncio.Event, number: int
    ) -> replies.Hello:
        got = asyncio.ensure_future(inbox.get())
        gone = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait(
                {got, gone}, timeout=HELLO_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for t in (got, gone):
                t.cancel()
        if not got.done() or got.cancelled():
            raise Unreachable(f"no WebRTC connection with {host(url)} (ICE or DTLS failed)")
        hello = replies.parse(got.result(), number)
        if not isinstance(hello, replies.Hello):
            raise Unreachable(f"the gateway at {host(url)} sent {hello.type!r} before hello")
        return hello

    async def _serve(self, mailbox: LatestFrame, out: asyncio.Queue[Any]) -> None:
        conn: RtcConnection = self._conn
        reader = asyncio.create_task(self._read_rtc(conn, out), name="edge-client-read")
        ended = asyncio.create_task(conn.ended.wait())
        finished = asyncio.create_task(conn.track.finished.wait())
        try:
            await asyncio.wait({reader, ended, finished}, return_when=asyncio.FIRST_COMPLETED)
            if finished.done() and not ended.done():
                await self._settle_rtc(conn)
        finally:
            for t in (reader, ended, finished):
                t.cancel()
            for t in (reader, ended, finished):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self.backoff.connected_for(time.monotonic() - self._opened_at)
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _settle_rtc(self, conn: RtcConnection) -> None:
        """The source has ended: until the gateway's count of frames taken (asked with `stats`
        and waited for) stays put between two asks and each is answered; bounded by
        final_wait_s."""
        end = time.monotonic() + self.final_wait_s
        last = -1
        while time.monotonic() < end and not conn.ended.is_set():
            await asyncio.sleep(SETTLE_POLL_S)
            self._stats.clear()
            try:
                conn.channel.send('{"type":"stats"}')
                await asyncio.wait_for(self._stats.wait(), max(0.0, end - time.monotonic()))
            except Exception:
                return  # the channel is gone, or the time is up
            if self._received == last and self._answers >= self._received:
                return
            last = self._received

    async def _read_rtc(self, conn: RtcConnection, out: asyncio.Queue[Any]) -> None:
        t = self.tally
        while True:
            text = await conn.inbox.get()
            try:
                reply = replies.parse(text, conn.number)
            except (ValueError, KeyError, TypeError) as e:
                unreadable(conn.hello.session, e)
                continue
            if isinstance(reply, replies.Result):
                t.results += 1
                self._answers += 1
            elif isinstance(reply, replies.Dropped):
                t.dropped[reply.reason] += len(reply.seqs)
                self._answers += len(reply.seqs)
            elif isinstance(reply, replies.Error) and reply.seq is not None:
                t.errors += 1
                self._answers += 1
            elif isinstance(reply, replies.Stats):
                self._received = reply.received
                self._stats.set()
            elif isinstance(reply, replies.Goaway):
                self._goaway = reply
            await out.put(reply)


def _offer_url(stream_url: str) -> tuple[str, str | None]:
    """The WebSocket stream URL a Session keeps, as the offer URL and the model."""
    parts = urlsplit(stream_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    model = parse_qs(parts.query).get("model", [None])[0]
    return urlunsplit((scheme, parts.netloc, "/v1/webrtc/offer", "", "")), model
