"""The device client, `edge stream` and `edge.client`, against the real gateway: a video made
here from the sample photos, streamed as a device would stream it, through a gateway that is
restarted, drained or full; and the errors a person sees when something is wrong."""

from __future__ import annotations

import asyncio
import random
import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import edge.client
from edge.client import backoff, replies
from edge.client.connection import stream_url
from edge.client.dialer import Dialer
from edge.client.errors import BadUrl
from edge.client.mailbox import EndOfSource, Frame, LatestFrame
from tests.client_util import (
    check_books,
    check_fresh,
    hellos,
    make_video,
    start_stream,
    stop_all,
    video_frames,
)
from tests.conftest import GatewayProcess, free_port, running, settings_for, wait_ready
from tests.operations_util import scrape, total
from tests.pace import deadline, wait_until
from tests.test_stream import ASTRONAUT_FACE, iou
from tests.tls_util import make_tls
from tests.wsclient import open_stream, read_into

ONE_PROCESS = {"EDGE_PROCESSES": "1"}


@pytest.fixture(autouse=True)
async def no_stream_left_running() -> AsyncIterator[None]:
    yield
    await stop_all()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of the astronaut photo at 10 fps."""
    return make_video(tmp_path_factory.mktemp("video") / "astronaut.mp4", frames=20, fps=10)


@pytest.mark.integration
async def test_a_video_file_streamed_every_frame_accounted(
    face_server: str, video: Path, tmp_path: Path
) -> None:
    """Guards against frames that vanish between the file and the gateway (read but neither
    sent nor counted as skipped, sent but never answered, answered twice), boxes that are not
    where the face is, and an annotated video that does not show them."""
    out, annotated = tmp_path / "replies.jsonl", tmp_path / "annotated.mp4"
    run = await start_stream(
        str(video), "--url", face_server, "--annotate", str(annotated), out=out
    )
    rc, stderr = await run.finish(frames=20)
    assert (rc, stderr) == (0, "")  # quiet: stderr is not a terminal
    lines = run.lines()
    summary = check_books(lines)
    assert summary["frames_read"] == 20 and summary["results"] > 0
    assert summary["reconnects"] == 0 and summary["connections"] == 1
    results = run.of_type("result")
    assert all(iou(r["detections"][0]["box"], ASTRONAUT_FACE) > 0.6 for r in results)
    assert all(r["latency_ms"] > 0 and r["seq"] >= 0 for r in results)
    assert summary["annotated"]["written"] + summary["annotated"]["left_out"] == len(results)
    frames = video_frames(annotated)
    assert len(frames) == summary["annotated"]["written"] > 0
    x1, y1, x2, y2 = (round(v) for v in results[0]["detections"][0]["box"])
    edge_row = frames[0][y1, x1 + 5 : x2 - 5].astype(int)  # the box's top edge, drawn red
    assert (edge_row[:, 0] - edge_row[:, 1:].max(axis=1) > 60).mean() > 0.8


@pytest.mark.integration
async def test_gateway_restarted_mid_stream(
    spawn_gateway, face_repo: Path, video: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The gateway dies (SIGKILL) and comes back on the same port: the client reconnects with
    backoff, answers the frames the dead connection left as `lost`, sends only frames read
    after the new connection opened, and its final counts add up."""
    port = free_port()
    gw: GatewayProcess = spawn_gateway(face_repo, ONE_PROCESS, port=port)
    await wait_ready(gw.url)
    run = await start_stream(
        str(video), "--url", f"ws://127.0.0.1:{port}", "--loop", "--fps", "20", out=tmp_path / "o"
    )
    await run.wait_for("result", 5, connection=1)
    gw.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(gw.proc.wait, deadline())
    await run.wait_for("retrying", 1)
    again: GatewayProcess = spawn_gateway(face_repo, ONE_PROCESS, port=port)
    await wait_ready(again.url)
    await run.wait_for("result", 5, connection=2)
    rc, stderr = await run.stop()
    assert (rc, stderr) == (0, "")
    lines = run.lines()
    summary = check_books(lines)
    check_fresh(lines)
    assert summary["reconnects"] >= 1 and summary["connections"] >= 2
    first, second = hellos(lines)[1], hellos(lines)[2]
    assert first["session"] != second["session"]
    assert second["frames_read"] > first["frames_read"]


@pytest.mark.integration
async def test_draining_gateway_sends_the_stream_to_the_next(
    spawn_gateway, face_repo: Path, video: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM drains gateway A: the client reads its goaway, moves to gateway B (the next
    --url) instead of hammering A, and no frame it sent goes unaccounted."""
    env = {**ONE_PROCESS, "EDGE_DRAIN_DELAY_S": "0.2"}
    a: GatewayProcess = spawn_gateway(face_repo, env)
    b: GatewayProcess = spawn_gateway(face_repo, env)
    await asyncio.gather(wait_ready(a.url), wait_ready(b.url))
    args = ("--url", a.url, "--url", b.url, "--loop", "--fps", "20")
    run = await start_stream(str(video), *args, out=tmp_path / "o")
    await run.wait_for("result", 5, connection=1)
    a.signal(signal.SIGTERM)
    await run.wait_for("result", 5, connection=2)
    rc, stderr = await run.stop()
    assert (rc, stderr) == (0, "")
    lines = run.lines()
    summary = check_books(lines)
    check_fresh(lines)
    goaway = run.of_type("goaway", connection=1)
    assert len(goaway) == 1 and goaway[0]["retry_after_ms"] > 0
    assert [h["url"].split("/v1/")[0] for h in hellos(lines).values()][:2] == [
        a.url.replace("http", "ws"),
        b.url.replace("http", "ws"),
    ]
    assert summary["dropped"].get("lost", 0) <= 1  # at most the frame sent as A stopped reading
    await asyncio.to_thread(a.proc.wait, deadline())
    assert a.proc.returncode == 0


@pytest.mark.integration
async def test_full_gateway_retry_after_respected(
    face_repo: Path, video: Path, tmp_path: Path
) -> None:
    """With max_streams = 1 and the slot taken, the upgrade is answered 503 + Retry-After: 1.
    The client waits at least that long between attempts (it never hammers the gateway), then
    streams once the slot is free."""
    async with (
        running(settings_for(face_repo, max_streams=1)) as (url, _),
        aiohttp.ClientSession() as http,
    ):
        holder, books = await open_stream(http, url)
        reading = asyncio.create_task(read_into(holder, books))  # answers the gateway's pings
        started = time.monotonic()
        run = await start_stream(
            str(video), "--url", url, "--loop", "--fps", "10", out=tmp_path / "o"
        )
        await run.wait_for("retrying", 3)
        elapsed = time.monotonic() - started
        refused = total(await scrape(http, url), "edge_streams_refused_total", reason="max_streams")
        assert 3 <= refused <= 1 + elapsed / 1.0, (refused, elapsed)  # Retry-After: 1
        assert all(m["wait_s"] >= 1.0 for m in run.of_type("retrying"))
        await holder.close()
        await reading
        await run.wait_for("result", 3)
        rc, stderr = await run.stop()
    assert (rc, stderr) == (0, "")
    summary = check_books(run.lines())
    assert summary["refusals"] >= 3 and summary["connections"] == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    "case",
    ["bad url", "unreadable file", "missing camera", "unreachable gateway", "auth refused"],
)
async def test_errors_are_one_line_and_an_exit_code(
    case: str, face_repo: Path, video: Path, tmp_path: Path
) -> None:
    """Guards against tracebacks and silent exits: each mistake a person can make is one line
    on stderr that says what is wrong, and a nonzero exit code that tells them apart."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    settings = settings_for(face_repo, auth_tokens=("right-token",))
    async with running(settings) as (url, _):
        source, gateway, extra, code = {
            "bad url": (str(video), "ftp://nowhere", [], 2),
            "unreadable file": (str(junk), url, [], 3),
            "missing camera": ("/dev/video63", url, [], 3),
            "unreachable gateway": (str(video), f"ws://127.0.0.1:{free_port()}", [], 4),
            "auth refused": (str(video), url, ["--token", "wrong-token"], 5),
        }[case]
        run = await start_stream(source, "--url", gateway, *extra, out=tmp_path / "o")
        rc, stderr = await run.finish()
    assert rc == code, stderr
    assert stderr.startswith("edge stream: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr


# -- the Python API ------------------------------------------------------------------------


@pytest.mark.integration
async def test_async_api_streams_and_types_replies(face_server: str, face_jpeg: bytes) -> None:
    """`async with edge.client.connect(...)`: typed replies, one per frame, with the source
    frame's index and a latency; the credit keeps at most one frame in flight, so a list of
    frames (not live) is sent whole, none dropped."""
    got: list[edge.client.Reply] = []
    async with edge.client.connect(face_server, model="blazeface") as s:
        assert isinstance(s.hello, edge.client.Hello) and s.hello.model == "blazeface@1"
        async for reply in s.stream([face_jpeg] * 6 + [b"not a picture"]):
            got.append(reply)
    results = [r for r in got if isinstance(r, edge.client.Result)]
    assert [r.frame for r in results] == list(range(6))
    assert all(iou(r.detections[0].box, ASTRONAUT_FACE) > 0.6 for r in results)  # type: ignore[arg-type]
    assert all(r.latency_ms and r.timing and r.detections[0].keypoints for r in results)
    errors = [r for r in got if isinstance(r, edge.client.Error)]
    assert [(e.frame, e.code) for e in errors] == [(6, "bad_frame")]
    assert any(isinstance(r, edge.client.Credit) and r.n >= 1 for r in got)
    t = s.tally
    assert (t.read, t.sent, t.results, t.errors, sum(t.dropped.values())) == (7, 7, 6, 1, 0)


@pytest.mark.integration
async def test_sync_api_for_scripts(face_server: str, face_jpeg: bytes) -> None:
    """`with edge.client.connect_sync(...)`: the same stream from plain code with no event
    loop of its own (run here on a thread, as a script would run it)."""

    def script() -> tuple[list[int], tuple[int, int]]:
        with edge.client.connect_sync(face_server) as s:
            frames = [
                r.frame
                for r in s.stream(iter([face_jpeg] * 4))
                if isinstance(r, edge.client.Result)
            ]
            return frames, (s.tally.sent, s.tally.results)

    frames, counts = await asyncio.wait_for(asyncio.to_thread(script), deadline(frames=4))
    assert frames == [0, 1, 2, 3] and counts == (4, 4)


@pytest.mark.integration
async def test_api_refusal_raises_a_client_error(face_repo: Path) -> None:
    """A token the gateway refuses raises edge.client.Refused on entry, not a library error."""
    async with running(settings_for(face_repo, auth_tokens=("right",))) as (url, _):
        with pytest.raises(edge.client.Refused) as e:
            async with edge.client.connect(url, token="wrong"):
                pass
    assert e.value.status == 401 and not e.value.retryable


@pytest.mark.integration
async def test_live_source_sends_only_the_newest_frame(face_server: str, face_jpeg: bytes) -> None:
    """A live source faster than the gateway: frames that wait while no credit is free are
    replaced by newer ones and counted as skipped; what is sent is answered without drops."""

    async def camera() -> object:
        for i in range(40):
            yield Frame(i, face_jpeg, time.monotonic())
            await asyncio.sleep(0)

    async with edge.client.connect(face_server) as s:
        sent = [
            r.frame
            async for r in s.stream(camera(), live=True)
            if isinstance(r, edge.client.Result)
        ]
    t = s.tally
    assert t.read == 40 and t.sent + sum(t.skipped.values()) == 40
    assert t.skipped["superseded"] > 0 and t.results == t.sent == len(sent)
    assert sent == sorted(sent) and sent[-1] == 39  # the last frame is never skipped
    assert not t.dropped


# -- the pieces ----------------------------------------------------------------------------


@pytest.mark.unit
def test_reply_parsing_matches_the_protocol() -> None:
    r = replies.parse(
        '{"type":"result","seq":3,"model":"blazeface@1","width":64,"height":48,'
        '"detections":[{"label":"face","score":0.9,"box":[1,2,3,4],"keypoints":[[1,2]]}],'
        '"timing":{"queue_ms":1,"inference_ms":2,"total_ms":4}}'
    )
    assert isinstance(r, replies.Result) and (r.seq, r.width, r.height) == (3, 64, 48)
    assert r.detections[0].box == (1, 2, 3, 4) and r.timing == replies.Timing(1, 2, 4)
    d = replies.parse('{"type":"dropped","seqs":[4,5],"reason":"stale"}')
    assert isinstance(d, replies.Dropped) and d.seqs == (4, 5) and d.reason == "stale"
    d = replies.parse('{"type":"dropped","seq":7,"reason":"overload"}')
    assert isinstance(d, replies.Dropped) and d.seqs == (7,)
    e = replies.parse('{"type":"error","code":"bad_message","message":"x"}')
    assert isinstance(e, replies.Error) and e.seq is None
    g = replies.parse('{"type":"goaway","retry_after_ms":1000}')
    assert isinstance(g, replies.Goaway) and g.retry_after_ms == 1000
    c = replies.parse('{"type":"credit","n":2}')
    assert isinstance(c, replies.Credit) and c.n == 2
    other = replies.parse('{"type":"pong"}')
    assert type(other) is replies.Reply and other.type == "pong"
    with pytest.raises(ValueError):
        replies.parse("[1]")


@pytest.mark.unit
def test_backoff_doubles_with_jitter_caps_and_honours_the_gateway() -> None:
    b = backoff.Backoff(random.Random(7))
    waits = [b.next() for _ in range(10)]
    for i, w in enumerate(waits):
        nominal = min(backoff.MAX_S, backoff.FIRST_S * 2**i)
        assert nominal * (1 - backoff.JITTER) <= w <= nominal * (1 + backoff.JITTER)
    assert b.next(at_least_s=60.0) == 60.0  # Retry-After longer than the backoff wins
    b.connected_for(backoff.STEADY_S)
    assert b.next() <= backoff.FIRST_S * (1 + backoff.JITTER)


@pytest.mark.unit
async def test_mailbox_keeps_only_the_newest_frame() -> None:
    box = LatestFrame()
    first, second = Frame(0, b"a", 0.0), Frame(1, b"b", 0.0)
    assert box.put(first) is None and box.put(second) is first
    assert await box.get() is second
    box.end()
    with pytest.raises(EndOfSource):
        await box.get()


@pytest.mark.unit
def test_gateway_urls() -> None:
    assert stream_url("ws://h:8080") == "ws://h:8080/v1/stream"
    assert stream_url("https://h/", "m@2") == "wss://h/v1/stream?model=m%402"
    assert stream_url("http://h:1/v1/stream?model=x") == "ws://h:1/v1/stream?model=x"
    for bad in ("h:8080", "ftp://h", "ws://", "ws://h:port"):
        with pytest.raises(BadUrl):
            stream_url(bad)


@pytest.mark.integration
async def test_a_video_file_over_webrtc(face_server: str, video: Path, tmp_path: Path) -> None:
    """`--transport webrtc`: the file goes as a video track, replies come on the DataChannel;
    every frame the gateway took is answered exactly once, boxes where the face is, and the
    frames lost between the track and the gateway's decoder are counted, not hidden."""
    run = await start_stream(
        str(video), "--url", face_server, "--transport", "webrtc", out=tmp_path / "o"
    )
    rc, stderr = await run.finish(frames=20)
    assert (rc, stderr) == (0, "")
    lines = run.lines()
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["frames_read"] == 20
    assert summary["frames_read"] == summary["sent"] + summary["skipped"]
    results = run.of_type("result")
    assert results and all(iou(r["detections"][0]["box"], ASTRONAUT_FACE) > 0.6 for r in results)
    seqs = [r["seq"] for r in results] + [s for d in run.of_type("dropped") for s in d["seqs"]]
    assert len(seqs) == len(set(seqs)), "a frame answered twice"
    taken = run.of_type("stats")[-1]["received"]  # the gateway's count, asked for at the end
    assert sorted(seqs) == list(range(taken))
    assert summary["unanswered"] == summary["sent"] - taken >= 0


@pytest.mark.integration
async def test_tls_with_the_given_ca(
    spawn_gateway, face_repo: Path, video: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """wss:// to a gateway whose certificate our own CA signed: refused as untrusted against
    the system's trust store (exit 4, one line), streamed with `--ca`."""
    ca, cert, key = make_tls(tmp_path)
    env = {**ONE_PROCESS, "EDGE_TLS_CERT": str(cert), "EDGE_TLS_KEY": str(key)}
    gw: GatewayProcess = spawn_gateway(face_repo, env)
    url = gw.url.replace("http://", "wss://")
    trusted = ssl.create_default_context(cafile=str(ca))

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(
                    gw.url.replace("http:", "https:") + "/readyz", ssl=trusted
                ) as r:
                    return r.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ready, deadline() + 60, "the TLS gateway to be ready")
    run = await start_stream(str(video), "--url", url, out=tmp_path / "untrusted")
    rc, stderr = await run.finish()
    assert rc == 4 and "not trusted" in stderr and stderr.count("\n") == 1, stderr
    run = await start_stream(str(video), "--url", url, "--ca", str(ca), out=tmp_path / "o")
    rc, stderr = await run.finish(frames=20)
    assert (rc, stderr) == (0, "")
    summary = check_books(run.lines())
    assert summary["results"] > 0 and summary["frames_read"] == 20


@pytest.mark.unit
async def test_dialer_waits_out_refusals_and_goaway() -> None:
    """Guards against hammering: a 503's Retry-After and a goaway's retry_after_ms are the
    least the client waits; with replicas a goaway moves on at once, and an unreachable first
    gateway is an error rather than a silent retry loop."""
    tally = edge.client.Tally()
    one = Dialer(["ws://a/v1/stream"], backoff.Backoff(random.Random(1)), tally)
    goaway = replies.Goaway({"type": "goaway"}, retry_after_ms=2500)
    assert one.after(goaway) >= 2.5
    two = Dialer(["ws://a/v1/stream", "ws://b/v1/stream"], backoff.Backoff(), tally)
    assert two.after(goaway) == 0.0 and two.urls[two._index] == "ws://b/v1/stream"

    attempts: list[str] = []
    waits: list[float] = []

    async def full_then_open(url: str, number: int) -> str:
        attempts.append(url)
        if len(attempts) < 3:
            raise edge.client.Refused(503, "full", retry_after_s=0.01)
        return url

    async def announce(why: str, wait: float) -> None:
        waits.append(wait)

    class OnlyWhatTheGatewayAsks(backoff.Backoff):
        def next(self, at_least_s: float = 0.0) -> float:
            return at_least_s

    dialer = Dialer(["ws://a/v1/stream"], OnlyWhatTheGatewayAsks(), tally)
    assert await dialer.dial(full_then_open, announce, first=True) == "ws://a/v1/stream"
    assert waits == [0.01, 0.01] and tally.refusals == 2

    async def unreachable(url: str, number: int) -> str:
        raise edge.client.Unreachable("nothing there")

    with pytest.raises(edge.client.Unreachable):
        await dialer.dial(unreachable, announce, first=True)


@pytest.mark.integration
async def test_a_stream_url_as_source(face_server: str, tmp_path: Path) -> None:
    """SOURCE as an http:// URL (PyAV opens it like an RTSP feed): a stream comes at its own
    pace, so frames it gives faster than the gateway answers are skipped and counted."""
    ts = make_video(tmp_path / "feed.ts", frames=20, fps=10)

    async def feed_file(_: web.Request) -> web.FileResponse:
        return web.FileResponse(ts)

    app = web.Application()
    app.router.add_get("/feed.ts", feed_file)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        feed = f"http://127.0.0.1:{runner.addresses[0][1]}/feed.ts"
        run = await start_stream(feed, "--url", face_server, out=tmp_path / "o")
        rc, stderr = await run.finish(frames=20)
    finally:
        await runner.cleanup()
    assert (rc, stderr) == (0, "")
    summary = check_books(run.lines())
    assert summary["frames_read"] == 20 and summary["results"] > 0
    assert all(iou(r["detections"][0]["box"], ASTRONAUT_FACE) > 0.6 for r in run.of_type("result"))


@pytest.mark.integration
async def test_images_from_a_directory_and_a_glob(
    face_server: str, face_jpeg: bytes, noface_jpeg: bytes, tmp_path: Path
) -> None:
    """Still images are not a live feed: each waits for its turn, none is skipped, each gets
    its own answer, in name order; a glob picks its files the same way."""
    shots = tmp_path / "shots"
    shots.mkdir()
    for name, data in [("a.jpg", face_jpeg), ("b.jpg", noface_jpeg), ("c.jpg", face_jpeg)]:
        (shots / name).write_bytes(data)
    (shots / "notes.txt").write_text("not an image")
    for source, expect in [(str(shots), [1, 0, 1]), (str(shots / "[ac].jpg"), [1, 1])]:
        run = await start_stream(source, "--url", face_server, out=tmp_path / "o")
        rc, stderr = await run.finish(frames=3)
        assert (rc, stderr) == (0, "")
        summary = check_books(run.lines())
        assert summary["frames_read"] == summary["sent"] == len(expect)
        results = sorted(run.of_type("result"), key=lambda r: r["frame"])
        assert [len(r["detections"]) for r in results] == expect
