"""One WebRTC session: a peer connection, the stream it feeds, and the tasks it owns.

- One reader per incoming track drains `track.recv()` all the time. aiortc queues decoded
  frames without bound, so the reader waits on nothing else: each video frame goes to the
  stream's one-slot mailbox (latest frame wins, edge.core.scheduler) as the decoded `av.VideoFrame`
  itself, converted to RGB by the worker that serves it, so a frame dropped as stale costs the
  event loop no conversion. Other tracks are drained and dropped.
- The stream's sender (edge.core.outbox) writes to the `results` channel through a
  back-pressured writer (edge.transports.webrtc.media).
- Its life is edge.core.session's, as a WebSocket's: it ends when the client hangs up
  (connection failed or closed, channel closed, track ended), after `idle_timeout_s` without a
  frame (counted from the offer, so a client that never connects goes too), when the sender
  gives up, and on drain: the frames taken are answered first, then `goaway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from edge.compat import timeout
from edge.core import streams as common
from edge.core.admission import Admission
from edge.core.services import Services
from edge.core.session import Closing, Ending, Hello, How, StreamSession
from edge.core.stream import Stream
from edge.frames import Error
from edge.transports.webrtc.annotate import AnnotatedTrack, AnnotatingWire
from edge.transports.webrtc.media import ChannelWriter, VideoPicture

log = logging.getLogger("edge.webrtc")

TRANSPORT = "webrtc"
CHANNEL_LABEL = "results"
PC_CLOSE_S = 5.0
#: replies wait this long after the first frame for the client to open `results` (at most half
#: of send_timeout_s); after that they are not kept for a channel that may never come
CHANNEL_WAIT_S = 3.0


@dataclass
class Offer:
    """A checked offer request (edge.transports.webrtc.offer.parse_offer)."""

    sdp: str
    model: str
    annotate: bool = False
    #: mid -> direction of each video section that sends, as the client offered it
    video: dict[str, str] = field(default_factory=dict)


#: what the log says for how the session ended (a reader's own reason aside)
REASONS = {
    How.CLOSED: "closed",
    How.SLOW_CONSUMER: "slow consumer",
    How.SEND_FAILED: "channel failed",
    How.GOING_AWAY: "goaway",
    How.READER_FAILED: "reader failed",
}


class WebRTCSession(StreamSession[str]):
    """Its reader (`read`) waits for the client to go: the peer connection's, the channel's
    and the tracks' events end it with a reason; the tracks' own readers start as the tracks
    arrive, during the negotiation."""

    task_prefix = "webrtc-"

    def __init__(
        self,
        services: Services,
        offer: Offer,
        configuration: RTCConfiguration,
        draw: Executor,
        forget: Callable[[WebRTCSession], None],
    ) -> None:
        super().__init__(services, TRANSPORT, log)
        self._wire = self.wire = AnnotatingWire()
        self._offer = offer
        self._draw = draw
        self._forget = forget
        self.pc = RTCPeerConnection(configuration)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("connectionstatechange", self._on_state)
        #: the gateway's max_streams slot and the token's stream slot, given back on close
        self.admission: Admission | None = None
        self.annotated: AnnotatedTrack | None = None
        self._video: MediaStreamTrack | None = None
        self._writer = ChannelWriter()
        self._channel_timer: asyncio.TimerHandle | None = None
        self._ended = asyncio.Event()
        self._reason = ""
        self._last_frame = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def negotiate(self) -> RTCSessionDescription:
        """Apply the client's offer (its tracks get their readers) and make our answer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(self._offer.sdp, "offer"))
        if self._offer.annotate:
            self._attach_annotated()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    async def say_hello(self, hello: Hello) -> None:
        """Said on the results channel once the client opens it (`_on_open`)."""

    def answerable(self) -> bool:
        return self._writer.open

    async def read(self, stream: Stream) -> str:
        """Until the client goes (connection failed or closed, channel closed, track ended)
        or no frame came for `idle_timeout_s`: why. The track readers stop with it."""
        try:
            return await self._watch()
        finally:
            await self._stop_reading()

    async def close_wire(self, ending: Ending[str]) -> Closing:
        """Close the peer connection; give the slots back."""
        try:
            if self._channel_timer is not None:
                self._channel_timer.cancel()
            await self._stop_reading()
            if self.annotated is not None:
                self.annotated.stop()
            async with timeout(PC_CLOSE_S):
                await self.pc.close()
        except Exception as e:
            log.warning("session=%s peer connection did not close cleanly: %r", self.id, e)
        finally:
            self._forget(self)
            if self.admission is not None:
                self.admission.release()
        reason = ending.close or REASONS[ending.how]
        return Closing(f"({reason})", reason)

    async def _stop_reading(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _end(self, reason: str) -> None:
        if not self._ended.is_set():
            self._reason = reason
            self._ended.set()

    async def _watch(self) -> str:
        idle = self.services.settings.idle_timeout_s
        while not self._ended.is_set():
            left = None if idle <= 0 else self._last_frame + idle - time.monotonic()
            if left is not None and left <= 0:
                log.info("session=%s no frame for %g s, closing", self.id, idle)
                self._end("idle")
                break
            with contextlib.suppress(asyncio.TimeoutError):
                async with timeout(left):
                    await self._ended.wait()
        return self._reason

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._end(f"connection {self.pc.connectionState}")

    # -- incoming media --------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._video is None:
            self._video = track
            self._spawn(self._read_video(track), "reader")
        else:  # not served, but drained all the same: aiortc would queue its frames forever
            self._spawn(self._drain(track), f"drain-{track.kind}")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        self._tasks.add(asyncio.create_task(coro, name=f"webrtc-{what}-{self.id}"))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        services, stream = self.services, self._opened()
        seq = 0
        try:
            while True:
                frame = await track.recv()
                now = self._last_frame = time.monotonic()
                if not isinstance(frame, av.VideoFrame):
                    continue
                if seq == 0 and not self._writer.ready.is_set():
                    wait = min(CHANNEL_WAIT_S, services.settings.send_timeout_s / 2)
                    loop = asyncio.get_running_loop()
                    self._channel_timer = loop.call_later(wait, self._writer.ready.set)
                if self.annotated is not None:
                    self.annotated.offer(frame)
                common.take_frame(services, stream, seq, VideoPicture(frame), now)
                seq += 1
        except MediaStreamError:
            self._end("track ended")
        except Exception:
            log.exception("session=%s video reader failed", self.id)
            services.metrics.errors.labels(TRANSPORT, "reader").inc()
            self._end("reader failed")

    async def _drain(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass
        except Exception:
            log.exception("session=%s %s track drain failed", self.id, track.kind)
            self.services.metrics.errors.labels(TRANSPORT, "reader").inc()

    def _attach_annotated(self) -> None:
        """Send the annotated track back on the client's video transceiver, if it may receive."""
        for t in self.pc.getTransceivers():
            if self._video is not None and t.receiver.track is self._video:
                if self._offer.video.get(t.mid or "") == "sendrecv":
                    self.annotated = self._wire.track = AnnotatedTrack(self._draw)
                    t.sender.replaceTrack(self.annotated)
                    t.direction = "sendrecv"
                return

    # -- the results channel ---------------------------------------------------------------
    def _on_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self._writer.channel is not None:
            log.info("session=%s ignoring data channel %r", self.id, channel.label)
            return
        self._writer.attach(channel)
        channel.on("message", self._on_message)
        channel.on("close", self._on_channel_close)
        if channel.readyState == "open":  # as aiortc hands over a channel the client opened
            self._on_open()
        else:
            channel.on("open", self._on_open)

    def _on_open(self) -> None:
        assert self._writer.channel is not None
        self._writer.channel.send(self.hello().text())  # first, before anything the outbox holds
        self._writer.ready.set()

    def _on_channel_close(self) -> None:
        self._writer.wake()
        self._end("channel closed")

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            common.apply_control(self.services, self._opened(), message)
        else:
            text = "binary messages are not understood here: send frames as the video track"
            self._opened().outbox.error(Error(None, "bad_message", text))

    async def send(self, text: str) -> None:
        """The outbox's writer."""
        await self._writer.send(text)
