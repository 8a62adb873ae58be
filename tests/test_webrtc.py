"""The WebRTC transport as an in-process aiortc client observes it (docs/protocol.md).

The client films a real photo: `PhotoTrack` yields frame k no earlier than k / fps and notes
when each left it, so a result's age is measured from the moment its frame was produced, all
through VP8, RTP, the server's decoder and the pipeline. The server's `seq` is the index of
the decoded frame on the track; over loopback no frame is lost, so it is the client's index.

`EDGE_WEBRTC_SOAK_S` sets how long the latency test runs (default 12 s; 60 s by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import gc
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from PIL import Image
from pyee.asyncio import AsyncIOEventEmitter

from edge.compat import timeout
from edge.core.outbox import Outbox
from edge.core.services import SERVICES
from edge.frames import Result, Timing
from edge.inference.tracking import track_colour
from edge.process.app import drain
from edge.settings import Settings, SettingsError
from edge.transports.webrtc.annotate import BOX_YUV, annotate, draw_box, marks, yuv_of
from edge.transports.webrtc.media import ChannelWriter
from edge.transports.webrtc.offer import PEERS, ice_configuration
from tests.conftest import running, settings_for, wait_ready
from tests.imagedata import load_rgb
from tests.pace import deadline, outpacing_fps, wait_until
from tests.test_stream import ASTRONAUT_FACE, iou
from tests.wsclient import Books

SOAK_S = float(os.environ.get("EDGE_WEBRTC_SOAK_S", "12"))
#: rounds the 95th percentile of the ages may span, and the median may grow by over the run
P95_ROUNDS, GROWTH_ROUNDS = 10, 3


# -- the client ------------------------------------------------------------------------------
class PhotoTrack(MediaStreamTrack):
    """A camera filming one photo at `fps`; after `frames` frames it holds still (sends none)."""

    kind = "video"

    def __init__(self, pixels: np.ndarray, fps: float, frames: int | None = None) -> None:
        super().__init__()
        rgb = VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        self._yuv = rgb.reformat(format="yuv420p").to_ndarray()
        self._period = 1 / fps
        self.frames = frames
        self.produced: list[float] = []  # time.monotonic() when frame k left recv()
        self._t0 = 0.0
        self._stopped = asyncio.Event()

    def hold(self) -> None:
        """Send no more frames."""
        self.frames = len(self.produced)

    def seconds_left(self) -> float:
        """How long, at its pace, the camera still films before it holds still."""
        assert self.frames is not None
        return max(0, self.frames - len(self.produced)) * self._period

    async def recv(self) -> VideoFrame:
        k = len(self.produced)
        if self.frames is not None and k >= self.frames:
            await self._stopped.wait()
        if self.readyState != "live":
            raise MediaStreamError
        if k == 0:
            self._t0 = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._t0 + k * self._period - time.monotonic()))
        frame = VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts, frame.time_base = round(k * self._period * 90_000), fractions.Fraction(1, 90_000)
        self.produced.append(time.monotonic())
        return frame

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


@dataclass
class Client:
    pc: RTCPeerConnection
    track: PhotoTrack | None
    channel: RTCDataChannel | None = None
    answer: dict[str, Any] = field(default_factory=dict)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    books: Books = field(default_factory=Books)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    channel_closed: asyncio.Event = field(default_factory=asyncio.Event)
    returned: list[VideoFrame] = field(default_factory=list)  # the annotated track, latest last

    def on_message(self, text: str | bytes) -> None:
        msg = json.loads(text)
        self.inbox.append(msg)
        self.books.record(msg)
        self.arrived.set()

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], within: float | None = None, start: int = 0
    ) -> dict[str, Any]:
        """The first message from index `start` on that satisfies `pred`, waiting for it (by
        default as long as a BlazeFace frame may take here, tests/pace.py)."""
        within = deadline() if within is None else within
        try:
            async with timeout(within):
                seen = start
                while True:
                    for msg in self.inbox[seen:]:
                        if pred(msg):
                            return msg
                    seen = len(self.inbox)
                    self.arrived.clear()
                    await self.arrived.wait()
        except asyncio.TimeoutError:
            last = self.inbox[-3:]
            raise AssertionError(f"no such message within {within:.1f} s; last: {last}") from None

    async def settle(self, model: str = "blazeface") -> int:
        """Once the camera has sent its frames (held now if it had no count), the server's
        count of frames taken has stayed put and every one of them is answered: that count.
        Allowed: the time the camera still films, and every frame not yet answered (in the
        encoder, the decoder or the pipeline) at `model`'s cost here."""
        assert self.track is not None and self.channel is not None
        if self.track.frames is None:
            self.track.hold()
        assert self.track.frames is not None
        outstanding = self.track.frames - len(self.books.replies)
        within = self.track.seconds_left() + deadline(frames=3 + outstanding, model=model)
        last, n = -1, 0

        async def settled() -> bool:
            nonlocal last, n
            assert self.channel is not None
            await asyncio.sleep(0.5)
            start = len(self.inbox)
            self.channel.send(json.dumps({"type": "stats"}))
            n = (await self.wait_for(lambda m: m["type"] == "stats", start=start))["received"]
            done = n == last and all(s in self.books.replies for s in range(n))
            last = n
            return done

        await wait_until(
            settled,
            within,
            lambda: f"{n} frames taken, unanswered: {set(range(n)) - set(self.books.replies)}",
        )
        assert self.track is not None
        self.books.sent_at = dict(enumerate(self.track.produced[:n]))
        return int(n)


@contextlib.asynccontextmanager
async def rtc_client(
    url: str, track: PhotoTrack | None, *, channel: bool = True, **body: Any
) -> AsyncIterator[Client]:
    """A connected client; its peer connection is closed when the block ends."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client = Client(pc, track)
    drains: list[asyncio.Task[None]] = []  # the return track, when there is one
    try:
        if track is not None:
            pc.addTrack(track)
        if channel:
            client.channel = ch = pc.createDataChannel("results")
            ch.on("message", client.on_message)
            ch.on("close", client.channel_closed.set)
        pc.on("track", lambda t: drains.append(asyncio.create_task(_keep_frames(t, client))))
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", **body}
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(url + "/v1/webrtc/offer", json=offer) as r:
                assert r.status == 200, await r.text()
                client.answer = await r.json()
        await pc.setRemoteDescription(RTCSessionDescription(client.answer["sdp"], "answer"))
        yield client
    finally:
        if track is not None:
            track.stop()
        await pc.close()
        for t in drains:
            t.cancel()
        await asyncio.gather(*drains, return_exceptions=True)


async def _keep_frames(track: MediaStreamTrack, client: Client) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            assert isinstance(frame, VideoFrame)
            client.returned[:] = [frame]


async def post_offer(url: str, body: Any) -> tuple[int, dict[str, Any], str | None]:
    async with aiohttp.ClientSession() as http:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with http.post(url + "/v1/webrtc/offer", data=data) as r:
            return r.status, await r.json(), r.headers.get("Retry-After")


async def offer_sdp() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendonly")
        pc.createDataChannel("results")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def until(
    cond: Callable[[], bool], within: float | None = None, what: str | Callable[[], str] = ""
) -> None:
    await wait_until(cond, deadline() if within is None else within, what)


def server_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("webrtc-"))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def face_pixels() -> np.ndarray:
    return load_rgb("astronaut.png")  # 512 x 512, the face at ASTRONAUT_FACE


# -- the tests -------------------------------------------------------------------------------
@pytest.mark.integration
async def test_face_box_and_every_frame_answered_once(
    face_repo: Path, face_pixels: np.ndarray
) -> None:
    """Guards against a wrong conversion of decoded video (size, colour order, scale), a hello
    that is not first, and a frame taken off the track but answered never or twice."""
    async with running(settings_for(face_repo)) as (url, _):
        async with rtc_client(url, PhotoTrack(face_pixels, fps=15, frames=30)) as c:
            assert c.answer["type"] == "answer" and c.answer["session"]
            assert c.answer["model"] == "blazeface@1"
            first = await c.wait_for(lambda m: m["type"] == "result")
            hello = c.inbox[0]
            assert hello["type"] == "hello" and hello["protocol"] == 1, c.inbox[:3]
            assert hello["session"] == c.answer["session"] and hello["model"] == "blazeface@1"
            assert (first["width"], first["height"]) == (512, 512)
            assert len(first["detections"]) == 1, first
            det = first["detections"][0]
            assert det["label"] == "face" and det["score"] > 0.8
            assert iou(det["box"], ASTRONAUT_FACE) > 0.6, det["box"]
            n = await c.settle()
        # Loopback loses none, but aiortc's jitter buffer emits a frame only once the next one
        # starts arriving, so the last one sent stays there.
        assert n == 29, n
        assert c.books.unanswered() == [] and c.books.answered_twice() == []
        kinds = c.books.kinds()
        assert set(kinds) <= {"result", "dropped:stale"} and kinds["result"] >= 10, kinds
        results = [m[0] for m in c.books.replies.values() if m[0]["type"] == "result"]
        assert all(iou(r["detections"][0]["box"], ASTRONAUT_FACE) > 0.6 for r in results)


@pytest.mark.integration
@pytest.mark.timeout(SOAK_S + 120)
async def test_age_stays_bounded_when_the_client_outpaces_the_model(
    text_repo: Path, face_pixels: np.ndarray
) -> None:
    """Latest frame wins on WebRTC too: a client sending 30 frames a second to a model that
    serves far fewer gets results for recent frames, within a few rounds (one run of the model
    and a frame interval, measured in this run), and their age does not grow over the run (it
    would if frames queued anywhere: in aiortc's track, our reader or the outbox)."""
    settings = settings_for(text_repo, workers=1, default_model="ppocr_det")
    pixels = np.asarray(Image.fromarray(face_pixels).resize((640, 480)))
    fps = max(30.0, outpacing_fps(1, "ppocr_det", workers=1))  # a camera, or faster
    async with running(settings) as (url, _), rtc_client(url, PhotoTrack(pixels, fps)) as c:
        await c.wait_for(lambda m: m["type"] == "result", within=deadline(model="ppocr_det"))
        await asyncio.sleep(SOAK_S)
        n = await c.settle("ppocr_det")
    books = c.books
    kinds = books.kinds()
    assert books.unanswered() == [] and books.answered_twice() == []
    assert kinds.get("dropped:stale", 0) >= n // 5, kinds  # it did outpace the model
    # (arrival, age, the result's own timing) in arrival order, and in thirds of the run
    rows = sorted(
        (books.answered_at[s], books.answered_at[s] - books.sent_at[s], m[0]["timing"])
        for s, m in books.replies.items()
        if m[0]["type"] == "result"
    )
    thirds = [rows[i * len(rows) // 3 : (i + 1) * len(rows) // 3] for i in range(3)]

    def round_of(part: list[tuple[float, float, dict[str, float]]]) -> float:
        """One round, measured: the one stream's frame run by the one worker, and the frame
        interval it waits in aiortc's jitter buffer before it is decoded."""
        return statistics.median(t["total_ms"] - t["queue_ms"] for _, _, t in part) / 1e3 + 1 / fps

    round_s = round_of(rows)
    p95 = sorted(age for _, age, _ in rows)[int(0.95 * len(rows))]
    # each third's median age in rounds of that third: a machine that gets busier mid-run
    # runs the model slower then, and the ages are no more rounds old; a queue's are ever more
    ages = [statistics.median(age for _, age, _ in t) / round_of(t) for t in thirds]
    figures = (
        f"{n} frames, {kinds}, round {round_s * 1e3:.0f} ms, p95 age {p95 * 1e3:.0f} ms, "
        f"median ages by third {[round(a, 2) for a in ages]} rounds"
    )
    print(f"webrtc soak {SOAK_S:g} s: {figures}")
    # Frames queued anywhere would age by most of a second per second of run (30 in, far
    # fewer out): dozens of rounds over the run.
    assert p95 < P95_ROUNDS * round_s, figures
    assert ages[2] < ages[0] + GROWTH_ROUNDS, figures


@pytest.mark.integration
async def test_no_task_or_peer_connection_outlives_its_session(
    face_repo: Path, face_pixels: np.ndarray
) -> None:
    """Ten sessions that hang up in turn by closing the connection and by closing the channel:
    afterwards the server holds no session, no task and no peer connection (nor does any
    thread: a worker must not pin the stream it served last)."""
    async with running(settings_for(face_repo)) as (url, app):
        services, peers = app[SERVICES], app[PEERS]
        before = len(asyncio.all_tasks())

        async def cycle(i: int) -> None:
            async with rtc_client(url, PhotoTrack(face_pixels, fps=15)) as c:
                await c.wait_for(lambda m: m["type"] == "result")
                if i % 2:
                    assert c.channel is not None
                    c.channel.close()
                    await until(lambda: not peers.sessions, what="session ends on channel close")

        for i in range(10):
            await cycle(i)
        await until(lambda: not peers.sessions and not list(services.sessions), what="sessions")
        await until(lambda: server_tasks() == [], what=f"our tasks end: {server_tasks()}")
        await until(
            lambda: len(asyncio.all_tasks()) <= before,
            what=f"tasks back to {before}: {sorted(t.get_name() for t in asyncio.all_tasks())}",
        )

        def peer_connections() -> list[RTCPeerConnection]:
            gc.collect()
            return [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)]

        # aiortc's own timers (SCTP retransmission, ICE consent) may hold a closed one a moment
        await until(
            lambda: not peer_connections(),
            what=lambda: (
                "peer connections gone; held by: "
                + str([[type(r).__name__ for r in gc.get_referrers(p)] for p in peer_connections()])
            ),
        )


@pytest.mark.integration
async def test_without_a_channel_frames_flow_and_the_session_ends_cleanly(
    face_repo: Path, face_pixels: np.ndarray
) -> None:
    """A client that never opens `results` still has its frames served (nobody hears the
    answers), and its session ends when it hangs up, or when frames stop for idle_timeout_s."""
    async with running(settings_for(face_repo, idle_timeout_s=1.5)) as (url, app):
        peers = app[PEERS]
        async with rtc_client(url, PhotoTrack(face_pixels, fps=15), channel=False) as c:
            session = next(s for s in peers.sessions if s.id == c.answer["session"])
            assert session.stream is not None
            stats = session.stream.stats
            await until(lambda: stats.processed >= 5, what="frames served")
        await until(lambda: not peers.sessions, what="session ends on hang-up")
        track = PhotoTrack(face_pixels, fps=15, frames=5)
        async with rtc_client(url, track, channel=False) as c:
            await until(lambda: len(track.produced) == 5 and peers.sessions != set())
            # idle_timeout_s after its last frame, not much later however slow the machine
            await until(
                lambda: not peers.sessions,
                within=1.5 + deadline(frames=5),
                what="session ends when idle",
            )
        await until(lambda: server_tasks() == [], what=f"our tasks end: {server_tasks()}")


@pytest.mark.integration
async def test_drain_answers_every_frame_then_goaway_then_close(
    face_repo: Path, face_pixels: np.ndarray
) -> None:
    """Drain must answer every frame taken, say goaway last, close the connection, and refuse
    new offers with 503 and Retry-After."""
    async with running(settings_for(face_repo)) as (url, app):
        async with rtc_client(url, PhotoTrack(face_pixels, fps=30)) as c:
            await c.wait_for(lambda m: m["type"] == "result")
            session = next(iter(app[PEERS].sessions))
            await asyncio.wait_for(drain(app), deadline(frames=2))
            assert session.stream is not None
            n = session.stream.stats.received
            await asyncio.wait_for(c.channel_closed.wait(), deadline())
            goaway = c.inbox[-1]
            assert goaway == {"type": "goaway", "retry_after_ms": 1000}, c.inbox[-3:]
            assert sorted(c.books.replies) == list(range(n))
            assert c.books.answered_twice() == []
            assert set(c.books.kinds()) <= {"result", "dropped:stale", "dropped:shutdown"}
            status, body, retry = await post_offer(url, {"sdp": await offer_sdp(), "type": "offer"})
            assert (status, body["error"], retry) == (503, "draining", "1")
        assert not app[PEERS].sessions


@pytest.mark.integration
async def test_offers_refused_with_reasons(face_repo: Path, face_pixels: np.ndarray) -> None:
    """Bad bodies get 400 with a message, an unknown model 404, a full gateway 503."""
    async with running(settings_for(face_repo, max_streams=1)) as (url, _):
        sdp = await offer_sdp()
        bad = [b"{", b"[]", {"type": "offer"}, {"sdp": sdp, "type": "answer"},
               {"sdp": sdp, "type": "offer", "bogus": 1}, {"sdp": "v=0\r\n", "type": "offer"},
               {"sdp": sdp, "type": "offer", "annotate": "yes"}]  # fmt: skip
        for body in bad:
            status, reply, _ = await post_offer(url, body)
            assert status == 400 and reply["error"] == "bad_offer" and reply["message"], body
        status, reply, _ = await post_offer(url, {"sdp": sdp, "type": "offer", "model": "nope"})
        assert status == 404 and reply["error"] == "unknown_model"
        async with rtc_client(url, PhotoTrack(face_pixels, fps=5)):
            status, reply, retry = await post_offer(url, {"sdp": sdp, "type": "offer"})
            assert (status, reply["error"], retry) == (503, "max_streams", "1")


@pytest.mark.integration
async def test_annotated_return_track_draws_the_face_box(
    face_repo: Path, face_pixels: np.ndarray
) -> None:
    """With "annotate": true the client gets its video back with the face box drawn in green
    where the face is."""
    async with running(settings_for(face_repo)) as (url, _):
        async with rtc_client(url, PhotoTrack(face_pixels, fps=15), annotate=True) as c:
            assert c.answer["annotate"] is True
            await c.wait_for(lambda m: m["type"] == "result")
            # frames drawn after the first result came back: wait for one to come round
            await until(
                lambda: bool(c.returned) and greenest_row(c.returned[-1]) > 60,
                what=lambda: (
                    "a frame on the return track with a green line along the face "
                    f"box's top; the latest's greenest row: {[greenest_row(f) for f in c.returned]}"
                ),
            )


def greenest_row(frame: VideoFrame) -> float:
    """How green the greenest row is around the top edge of the face box (at most 15 in the
    photo itself)."""
    rgb = frame.to_ndarray(format="rgb24").astype(int)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    band = rgb[y1 - 6 : y1 + 6, x1 + 10 : x2 - 10]
    green = band[..., 1] - (band[..., 0] + band[..., 2]) / 2
    return float(green.mean(axis=1).max())


@pytest.mark.unit
def test_draw_box_outlines_in_all_three_planes() -> None:
    """The outline lands in Y, U and V at the box's place, and nowhere else."""
    w, h = 64, 48
    yuv = np.zeros((h * 3 // 2, w), np.uint8)
    timing = Timing(0.0, 0.0, 0.0)
    result = Result(0, "m@1", 128, 96, timing, {"detections": [{"box": [20, 10, 60, 50]}]})
    for mark in marks(result, w, h):
        draw_box(yuv, w, h, mark.box, mark.colour)
    y = yuv[:h]
    assert (y[5, 10:32] == BOX_YUV[0]).all() and (y[5:26, 10] == BOX_YUV[0]).all()
    assert y[15, 20] == 0 and y[0, 0] == 0
    u = yuv.reshape(-1)[w * h : w * h + w * h // 4].reshape(h // 2, w // 2)
    assert u[2, 5] == BOX_YUV[1] and u[7, 10] == 0


@pytest.mark.unit
def test_return_track_colours_tracks_and_writes_text_under_boxes() -> None:
    """Guards against the return track drawing every track in one colour (or in another
    colour than the dashboard and `edge stream --annotate` give the same track), and against
    what a reading model read not being written under its box."""
    w, h = 320, 240
    grey = VideoFrame.from_ndarray(np.full((h * 3 // 2, w), 128, np.uint8), format="yuv420p")
    grey.pts, grey.time_base = 0, fractions.Fraction(1, 90000)
    detections = [
        {"label": "text", "score": 0.9, "box": [20, 20, 140, 60], "track_id": 1, "text": "HELLO"},
        {"label": "text", "score": 0.9, "box": [180, 20, 300, 60], "track_id": 2},
    ]
    result = Result(0, "m@1", w, h, Timing(0.0, 0.0, 0.0), {"detections": detections})
    drawn = annotate(grey, result).to_ndarray()
    luma = drawn[:h].astype(int)
    tops = [int(luma[20, 80]), int(luma[20, 240])]  # each box's top edge
    assert tops == [yuv_of(track_colour(1))[0], yuv_of(track_colour(2))[0]]
    assert tops[0] != tops[1] and BOX_YUV[0] not in tops
    under = luma[62:92, 20:140]  # the band under the first box: the text on its plate
    rows, cols = np.nonzero(under != 128)
    assert len(rows) > 100, "nothing written under the box that reads HELLO"
    assert rows.min() <= 2 and cols.min() <= 2, "the text is not right under its box"
    assert len(np.unique(under[rows, cols])) >= 2, "a plate with no text on it"
    assert (luma[62:92, 180:300] == 128).all(), "text written under a box that read none"


class FakeChannel(AsyncIOEventEmitter):
    """An open channel whose peer reads nothing until `drain()`: bytes pile up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.readyState = "open"
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.sent: list[str] = []

    def send(self, text: str) -> None:
        self.sent.append(text)
        self.bufferedAmount += len(text)

    def drain(self) -> None:
        self.bufferedAmount = 0
        self.emit("bufferedamountlow")


@pytest.mark.unit
async def test_a_full_channel_holds_the_sender_and_the_outbox_stays_bounded() -> None:
    """Guards against queueing without bound on the DataChannel: past `high` bytes unsent the
    writer waits, so the outbox's backlog fills and reports congestion (new frames are then
    dropped as overload before any work); all flows again once the peer reads; a channel that
    closes under a waiting writer stops the sender."""
    channel = FakeChannel()
    writer = ChannelWriter(high=1000, low=100)
    writer.attach(channel)  # type: ignore[arg-type]
    outbox = Outbox(writer.send, max_pending=4, send_timeout=10)
    sender = asyncio.create_task(outbox.run())
    try:
        for i in range(12):
            outbox.put(f"{i:03d}" + "x" * 297)
        await asyncio.sleep(0.05)
        assert channel.sent == []  # no channel ready yet: the writer waits for one
        writer.ready.set()
        await until(lambda: len(channel.sent) >= 4, what=lambda: f"4 sent: {len(channel.sent)}")
        await asyncio.sleep(0.05)  # and no more: the writer holds
        assert len(channel.sent) == 4 and channel.bufferedAmount == 1200
        assert outbox.congested

        def drained() -> bool:
            channel.drain()
            return len(channel.sent) >= 12

        await until(drained, what=lambda: f"12 sent once the peer reads: {len(channel.sent)}")
        assert [t[:3] for t in channel.sent] == [f"{i:03d}" for i in range(12)]
        outbox.put("y" * 2000)
        await until(lambda: channel.sent[-1][0] == "y", what="the large message handed over")
        channel.readyState = "closed"
        writer.wake()
        await asyncio.wait_for(sender, deadline())
        assert isinstance(outbox.failed, ConnectionError)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


@pytest.mark.unit
def test_ice_servers_from_settings() -> None:
    """TURN credentials go into the server entry, not its URL; none set means none used (not
    aiortc's default public STUN server); a malformed entry stops startup without echoing it."""
    assert ice_configuration(Settings()).iceServers == []
    settings = Settings(
        stun_servers=("stun:stun.example.net:3478",),
        turn_servers=("turn:user:pa:ss@turn.example.net:3478?transport=tcp", "turns:t.x:5349"),
    )
    stun, turn, bare = ice_configuration(settings).iceServers or []
    assert stun.urls == "stun:stun.example.net:3478"
    assert (turn.urls, turn.username, turn.credential) == (
        "turn:turn.example.net:3478?transport=tcp",
        "user",
        "pa:ss",
    )
    assert (bare.urls, bare.username) == ("turns:t.x:5349", None)
    with pytest.raises(SettingsError) as e:
        ice_configuration(Settings(turn_servers=("http://u:secret@x",)))
    assert "secret" not in str(e.value)


@pytest.mark.integration
async def test_a_session_on_a_multi_process_gateway(
    spawn_gateway: Any, face_repo: Path, face_pixels: np.ndarray
) -> None:
    """Guards against a WebRTC session split across serving processes (the offer answered by
    one, the media or the channel left with another): several sessions against two processes
    each get a face result for every frame's turn, every frame answered once."""
    gw = spawn_gateway(face_repo, {"EDGE_PROCESSES": "2"})
    await wait_ready(gw.url)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                rtc_client(gw.url, PhotoTrack(face_pixels, fps=15, frames=30))
            )
            for _ in range(3)
        ]
        for c in clients:
            first = await c.wait_for(lambda m: m["type"] == "result")
            assert iou(first["detections"][0]["box"], ASTRONAUT_FACE) > 0.6, first
        assert {c.inbox[0]["process"] for c in clients} == {0, 1}
        for c in clients:
            assert await c.settle() == 29
            assert c.books.unanswered() == [] and c.books.answered_twice() == []
