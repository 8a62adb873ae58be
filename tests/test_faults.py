"""Faults: a model that fails mid-batch, clients that vanish or crawl, a gateway killed under load.

(A client that never reads is in test_overload.py, a model reload that fails in
test_models.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from edge.core.services import SERVICES
from edge.models.repository import Route
from tests import rawws
from tests.conftest import GatewayProcess, free_port, jpeg, running, settings_for, wait_ready
from tests.fuzz_util import png_parser_crash
from tests.operations_util import scrape, total
from tests.overload_util import blast
from tests.pace import deadline, wait_until
from tests.test_stream import ASTRONAUT_FACE, iou
from tests.wsclient import Books, next_reply, open_stream, read_into

pytestmark = pytest.mark.integration

REQUEST_HEAD_TIMEOUT_S = 5.0
SHORT_REQUEST_TIMEOUT = {"EDGE_REQUEST_TIMEOUT_S": str(REQUEST_HEAD_TIMEOUT_S)}


async def test_inference_failing_mid_batch_fails_that_batch_only(text_repo: Path) -> None:
    """The session raising on a real batch of two: both frames of that batch are answered
    `inference_failed`, no other frame is, and every stream's next frame gets a result."""
    page = jpeg("page.png")
    async with (
        running(settings_for(text_repo, default_model="ppocr_det", workers=2)) as (url, app),
        aiohttp.ClientSession() as http,
    ):
        model = app[SERVICES].repo.resolve(Route("ppocr_det"))
        assert model.spec.max_batch == 2
        real_run, failed = model.run_timed, []

        def run_timed(batch: np.ndarray, worker: int) -> Any:
            if not failed and len(batch) == 2:
                failed.append(len(batch))
                raise RuntimeError("injected: session lost its device")
            return real_run(batch, worker)

        model.run_timed = run_timed  # type: ignore[method-assign]
        streams = [await open_stream(http, url, "ppocr_det") for _ in range(4)]
        within = deadline(frames=1, streams=len(streams), model="ppocr_det")
        replies: list[list[dict[str, Any]]] = [[] for _ in streams]
        rounds_after = 0
        for _ in range(40):  # until a batch of two formed and failed, then two more rounds
            await asyncio.gather(*(ws.send_bytes(page) for ws, _ in streams))
            for i, (ws, _) in enumerate(streams):
                replies[i].append(await next_reply(ws, within))
            rounds_after += bool(failed)
            if rounds_after > 2:
                break
        for ws, _ in streams:
            await ws.close()
        after: dict[tuple[str, tuple], float] = {}

        async def settled() -> bool:  # a worker lowers in-flight just after its last reply
            after.update(await scrape(http, url))
            return total(after, "edge_inflight_frames") == 0

        await wait_until(
            settled, deadline(), lambda: f"in flight: {total(after, 'edge_inflight_frames')}"
        )
    assert failed == [2], "no batch of two formed in 40 rounds"
    errors = [(i, r) for i, rs in enumerate(replies) for r in rs if r["type"] == "error"]
    assert len(errors) == 2 and errors[0][0] != errors[1][0], errors
    assert errors[0][1]["seq"] == errors[1][1]["seq"]  # the same round: one batch
    for _, r in errors:
        assert r["code"] == "inference_failed" and "injected" in r["message"], r
    for rs in replies:
        assert [r["seq"] for r in rs] == list(range(len(rs)))
        assert all(r["type"] == "result" for r in rs[-2:]), rs[-2:]
    assert total(after, "edge_frame_errors_total", stage="inference") == 2
    assert total(after, "edge_inflight_frames") == 0


async def test_a_frame_that_crashes_the_png_parser_costs_no_worker(
    face_repo: Path, face_jpeg: bytes
) -> None:
    """A PNG that makes Pillow raise IndexError (found by bench/fuzz_atheris.py) must be
    answered `bad_frame`; the exception must not end the worker thread that decoded it (with
    every worker gone, no stream would ever get another result)."""
    crash = png_parser_crash()
    async with (
        running(settings_for(face_repo, workers=2)) as (url, _),
        aiohttp.ClientSession() as http,
    ):
        ws, _ = await open_stream(http, url)
        for seq in range(3):  # one more than there are workers
            await ws.send_bytes(crash)
            reply = await next_reply(ws)
            assert (reply["type"], reply["seq"], reply["code"]) == ("error", seq, "bad_frame")
        await ws.send_bytes(face_jpeg)
        assert (await next_reply(ws))["type"] == "result"
        await ws.close()


@pytest.mark.parametrize("how", ["reset", "reset_mid_frame", "fin_no_close", "silent"])
async def test_a_client_that_vanishes_is_cleaned_up(
    face_repo: Path, face_jpeg: bytes, how: str
) -> None:
    """Clients that disappear without a close handshake: reset, reset halfway through a frame,
    TCP close with no WebSocket close, or silence (no pong: only the heartbeat tells). The
    server must end their sessions (active streams back to 0, no task or thread left behind)
    while another stream is served throughout, every one of its frames answered."""
    async with (
        running(settings_for(face_repo, heartbeat_s=1.0)) as (url, app),
        aiohttp.ClientSession() as http,
    ):
        services = app[SERVICES]
        baseline_tasks = len(asyncio.all_tasks())
        good, books = await open_stream(http, url)
        reader = asyncio.create_task(read_into(good, books))
        sender = asyncio.create_task(blast(good, books, face_jpeg, 60.0, 25.0))
        vanished = [await rawws.open_ws(url) for _ in range(3)]
        for _, w in vanished:
            for _ in range(5):
                w.write(rawws.frame(face_jpeg))
            await w.drain()

        async def all_frames_taken() -> bool:
            m = await scrape(http, url)
            return total(m, "edge_frames_received_total") >= len(books.sent_at) + 15

        await wait_until(
            all_frames_taken, deadline(frames=15), "the server to take the vanished clients' frames"
        )
        assert len(services.sessions) == 4
        for _, w in vanished:
            if how == "reset_mid_frame":
                w.write(rawws.frame(face_jpeg)[: len(face_jpeg) // 2])
                await w.drain()
            if how.startswith("reset"):
                rawws.reset(w)
            elif how == "fin_no_close":
                w.close()
            # "silent": held open, never read, never answers a ping

        async def only_the_good_one_left() -> bool:
            m = await scrape(http, url)
            return len(services.sessions) == 1 and total(m, "edge_active_streams") == 1

        # a silent client is found out by the heartbeat: a ping, then no pong
        await wait_until(
            only_the_good_one_left,
            2 * services.settings.heartbeat_s + deadline(),
            lambda: f"{len(services.sessions)} sessions, the vanished ones not ended",
        )
        n_results = len(books.result_ages())
        await wait_until(
            lambda: len(books.result_ages()) > n_results + 5,
            6 / 25 + deadline(frames=6),  # six more frames at 25 a second, served
            lambda: f"the other stream stalled: {len(books.result_ages()) - n_results} results",
        )
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await wait_until(lambda: not books.unanswered(), deadline(frames=2), books.unanswered)
        await good.close()
        await asyncio.wait_for(reader, deadline())
        for _, w in vanished:
            w.transport.abort()

        async def all_clean() -> bool:
            m = await scrape(http, url)
            names = [t.get_name() for t in asyncio.all_tasks()]
            tasks = [n for n in names if n.startswith(("sender-", "reader-"))]
            return (
                not services.sessions
                and total(m, "edge_active_streams") == 0
                and total(m, "edge_inflight_frames") == 0
                and not tasks
                and len(asyncio.all_tasks()) <= baseline_tasks
            )

        await wait_until(all_clean, deadline(), "the server to end every session and task")
    assert books.unanswered() == [] and books.answered_twice() == []
    assert all(m[0]["type"] in ("result", "dropped") for m in books.replies.values())


async def test_slow_loris_upgrades_are_cut_off_and_others_are_served(
    spawn_gateway, face_repo: Path, face_jpeg: bytes
) -> None:  # type: ignore[no-untyped-def]
    """Many connections that send an upgrade request a byte at a time and never finish it:
    other clients are served meanwhile, and `edge serve` closes every one of them once
    EDGE_REQUEST_TIMEOUT_S has passed (aiohttp's default would hold them over an hour)."""
    gw: GatewayProcess = spawn_gateway(face_repo, SHORT_REQUEST_TIMEOUT)
    await wait_ready(gw.url)
    fds_before = gw.fds()
    request = rawws.upgrade_request(gw.url)
    n = 150

    async def loris() -> float:
        t0 = time.monotonic()  # before the connection: the server cannot cut it sooner
        reader, writer = await rawws.connect(gw.url)
        eof = asyncio.create_task(reader.read(1))
        try:
            for byte in request[:-2]:  # never the blank line that ends the head
                await asyncio.wait([eof], timeout=0.25)
                if eof.done():
                    break
                writer.write(bytes([byte]))
            # cut: a close, or a reset when a byte was on its way as the server closed
            with contextlib.suppress(ConnectionResetError):
                await asyncio.wait_for(eof, REQUEST_HEAD_TIMEOUT_S + deadline())
            return time.monotonic() - t0
        finally:
            writer.transport.abort()

    slow = [asyncio.create_task(loris()) for _ in range(n)]
    await wait_until(
        lambda: gw.fds() >= fds_before + n - 5,
        deadline(),
        lambda: f"{gw.fds() - fds_before} of {n} slow connections held open",
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # served meanwhile: health, a stream, a unary call
            async with http.get(gw.url + "/healthz") as r:
                assert r.status == 200
            ws, _ = await open_stream(http, gw.url)
            await ws.send_bytes(face_jpeg)
            assert (await next_reply(ws))["type"] == "result"
            await ws.close()
            async with http.post(gw.url + "/v1/models/blazeface/infer", data=face_jpeg) as r:
                assert r.status == 200
            # meanwhile: served while every slow connection is still held, not after the cut
            cut = sum(t.done() for t in slow)
            assert not cut, f"served only after {cut} slow connections were cut off"
            await asyncio.sleep(0.25)
    # cut off once the timeout has passed (not an hour later), however slow the machine
    late = REQUEST_HEAD_TIMEOUT_S + deadline()
    held = await asyncio.wait_for(asyncio.gather(*slow), late + deadline())
    assert min(held) > REQUEST_HEAD_TIMEOUT_S - 1 and max(held) < late, (min(held), max(held))
    await wait_until(
        lambda: gw.fds() <= fds_before + 2,
        deadline(),
        lambda: f"{gw.fds() - fds_before} descriptors still held",
    )


async def test_a_request_body_sent_a_byte_at_a_time_is_cut_off(
    spawn_gateway, face_repo: Path
) -> None:  # type: ignore[no-untyped-def]
    """The slow-loris of bodies: a complete request head, then a body that trickles in. The
    head deadline no longer applies once the head is in, so without a body deadline the
    handler waits for ever (it holds a task, a socket and up to max_frame_bytes)."""
    gw: GatewayProcess = spawn_gateway(face_repo, SHORT_REQUEST_TIMEOUT)
    await wait_ready(gw.url)
    reader, writer = await rawws.connect(gw.url)
    writer.write(
        b"POST /v1/models/blazeface/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    )
    eof = asyncio.create_task(reader.read(1))
    t0 = time.monotonic()
    late = REQUEST_HEAD_TIMEOUT_S + deadline()  # the timeout, and the cut however slow
    try:
        while not eof.done() and time.monotonic() - t0 < late:
            writer.write(b"\xff")
            await asyncio.wait([eof], timeout=0.5)
        assert eof.done(), f"a trickling request body is still held open after {late:.1f} s"
    finally:
        eof.cancel()
        writer.transport.abort()


async def test_sigkill_and_restart_under_load(
    spawn_gateway, face_repo: Path, face_jpeg: bytes
) -> None:  # type: ignore[no-untyped-def]
    """`edge serve` SIGKILLed under load and started again on the same port: clients
    reconnect and are served. No client holds a result the server did not produce, no seq is
    answered twice on a connection, and the frames the dead process took are simply
    unanswered: the client's books name them, and they are only the last moments' frames."""
    port = free_port()
    first: GatewayProcess = spawn_gateway(face_repo, None, port)
    await wait_ready(first.url)
    url = first.url
    stop = asyncio.Event()
    n_clients = 4
    live: list[Books] = [Books() for _ in range(n_clients)]  # each client's connection now

    async def client(i: int) -> list[tuple[Books, float, int | None]]:
        """(books, when the connection ended, close code) for each connection it made."""
        conns: list[tuple[Books, float, int | None]] = []
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                try:
                    ws, books = await open_stream(http, url)
                except (aiohttp.ClientError, OSError, TimeoutError, AssertionError):
                    await asyncio.sleep(0.1)
                    continue
                live[i] = books
                reader = asyncio.create_task(read_into(ws, books))
                seq = 0
                while not stop.is_set() and not reader.done():
                    books.sent_at[seq] = time.monotonic()
                    try:
                        await ws.send_bytes(face_jpeg)
                    except (aiohttp.ClientError, ConnectionError):
                        del books.sent_at[seq]
                        break
                    seq += 1
                    await asyncio.sleep(0.02)
                if stop.is_set() and not reader.done():
                    await wait_until(
                        lambda: not books.unanswered(),  # noqa: B023 (awaited here)
                        deadline(frames=2, streams=n_clients),
                        books.unanswered,
                    )
                    await ws.close()
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    await asyncio.wait_for(reader, deadline())
                conns.append((books, time.monotonic(), ws.close_code))
        return conns

    def served(n: int, besides: list[Books]) -> bool:
        """Every client on a connection other than `besides` has had `n` results on it."""
        fresh = [b for b in live if all(b is not old for old in besides)]
        return len(fresh) == len(live) and all(b.kinds().get("result", 0) >= n for b in fresh)

    def results_now() -> list[int]:
        return [b.kinds().get("result", 0) for b in live]

    clients = [asyncio.create_task(client(i)) for i in range(n_clients)]
    # under load: every client streaming and served, before the kill and after the restart
    work = deadline(frames=40, streams=n_clients)
    await wait_until(lambda: served(40, []), work, results_now)
    cut = list(live)
    killed_at = time.monotonic()
    first.signal(signal.SIGKILL)
    await asyncio.to_thread(first.proc.wait, deadline())
    second: GatewayProcess = spawn_gateway(face_repo, None, port)
    await wait_ready(second.url)
    await wait_until(lambda: served(40, cut), work, results_now)
    stop.set()
    results = await asyncio.wait_for(asyncio.gather(*clients), 2 * deadline(2, n_clients))
    async with aiohttp.ClientSession() as http:
        after = await scrape(http, second.url)
    on_second: list[Books] = []
    for conns in results:
        assert len({b.hello["session"] for b, _, _ in conns}) == len(conns)
        # the first connection is the one the kill cut: no orderly close came on it; every
        # later one is to the restarted server and was closed by the client (1000)
        assert len(conns) >= 2, "a client did not reconnect"
        assert conns[0][2] not in (1000, 1001), conns[0][2]
        assert killed_at <= conns[0][1] < killed_at + deadline(), "not cut by the kill"
        assert all(code == 1000 for _, _, code in conns[1:]), conns
        for books, _, _ in conns:
            check_books_are_genuine(books)
        books = conns[0][0]
        # the last moments before the kill: twice the longest any answer took on this
        # connection; a frame sent earlier had time to be answered
        waits = [books.answered_at[s] - books.sent_at[s] for s in books.replies]
        moments = 2 * max(waits)
        late = [s for s in books.unanswered() if books.sent_at[s] < killed_at - moments]
        assert not late, f"frames sent well before the kill went unanswered: {late}"
        print(
            f"killed connection: {len(books.sent_at)} frames sent, "
            f"{len(books.replies)} answered (longest wait {max(waits) * 1e3:.0f} ms), "
            f"unanswered {books.unanswered()}"
        )
        for books, _, _ in conns[1:]:
            assert books.unanswered() == [], "the live server left frames unanswered"
            on_second.append(books)
    assert all(b.kinds().get("result", 0) > 0 for b in on_second)
    sent = sum(len(b.sent_at) for b in on_second)
    results_held = sum(b.kinds().get("result", 0) for b in on_second)
    assert total(after, "edge_frames_received_total", transport="websocket") == sent
    assert total(after, "edge_frames_processed_total", transport="websocket") == results_held


def check_books_are_genuine(books: Books) -> None:
    """Each reply answers a frame sent on this connection, once; each result is the face."""
    assert books.answered_twice() == []
    assert set(books.replies) <= set(books.sent_at)
    for msgs in books.replies.values():
        r = msgs[0]
        assert r["type"] in ("result", "dropped"), r
        if r["type"] == "result":
            assert r["model"] == "blazeface@1" and (r["width"], r["height"]) == (512, 512)
            assert iou(r["detections"][0]["box"], ASTRONAUT_FACE) > 0.6, r
