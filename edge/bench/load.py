"""Streams that offer frames at a steady pace, as cameras do, and the books they keep.

Each stream sends one frame every 1/fps seconds. A camera never sends an old picture: when a
send took longer than a period (a server that stops reading holds the socket full), the
ticks that passed are skipped at the source and counted, not sent late in a burst. The age
of a result is the time from its frame leaving the client to its result arriving. After the
run each stream waits for the replies still due, until every frame is answered or none has
come for a while: QUIET_S plus twice the oldest age it has seen (over WebRTC the last frame
sent may never be decoded, so never answered: docs/webrtc.md)."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import aiohttp

from edge.bench.links import EndOfStream, Link, opener

#: after the run, a stream stops waiting for replies when none has come for this long, plus
#: twice the oldest age it has seen
QUIET_S = 1.0
#: and in any case after this long
SETTLE_MAX_S = 120.0
#: client processes start together this long after they are asked to (spawn and connect)
PROCESS_LEAD_S = 3.0


@dataclass(frozen=True)
class Load:
    """What a run offers: `streams` streams of `data` at `fps` each for `seconds`, to `model`
    over `transport` at `url`."""

    transport: str
    url: str
    model: str
    data: bytes
    streams: int
    fps: float
    seconds: float


@dataclass
class Run:
    """What the clients of one load run observed."""

    streams: int
    offered_fps: float  # asked for, all streams together
    seconds: float  # asked for
    t0: float = 0.0  # time.monotonic() when the first frame was due
    sent: int = 0
    skipped: int = 0  # frames the clients did not send: the pace fell behind, or a link's slot
    results: int = 0
    dropped: int = 0
    errors: int = 0
    unanswered: int = 0
    twice: int = 0
    #: per result: (seconds since t0 when it arrived, age of its frame in seconds)
    ages: list[tuple[float, float]] = field(default_factory=list)
    per_stream: list[int] = field(default_factory=list)  # results each stream got

    def throughput(self) -> float:
        """Results a second that arrived within the run (not those after it, in the settle)."""
        return sum(1 for t, _ in self.ages if t <= self.seconds) / self.seconds

    def sent_fps(self) -> float:
        return self.sent / self.seconds


def merge(runs: list[Run]) -> Run:
    """Runs of the same load from several client processes, as one."""
    out = Run(sum(r.streams for r in runs), sum(r.offered_fps for r in runs), runs[0].seconds)
    out.t0 = min(r.t0 for r in runs)
    for r in runs:
        for key in ("sent", "skipped", "results", "dropped", "errors", "unanswered", "twice"):
            setattr(out, key, getattr(out, key) + getattr(r, key))
        out.ages += [(t + r.t0 - out.t0, a) for t, a in r.ages]
        out.per_stream += r.per_stream
    out.ages.sort()
    return out


async def drive(load: Load, start_at: float = 0.0, progress_every: float = 0.0) -> Run:
    """Offer `load`. Every stream connects first; the run starts at `start_at`
    (time.monotonic()) or once all are open."""
    streams, fps = load.streams, load.fps
    run = Run(streams, streams * fps, load.seconds, per_stream=[0] * streams)
    connect = opener(load.transport)
    async with aiohttp.ClientSession() as http:
        opened = await asyncio.gather(
            *(connect(http, load.url, load.model) for _ in range(streams)),
            return_exceptions=True,
        )
        links = [link for link in opened if isinstance(link, Link)]
        try:
            for failed in opened:
                if isinstance(failed, BaseException):
                    raise failed
            run.t0 = max(start_at, time.monotonic())
            await asyncio.sleep(run.t0 - time.monotonic())
            ticker = asyncio.create_task(_progress(run, progress_every), name="bench-progress")
            try:
                await asyncio.gather(
                    *(_stream(run, k, link, load.data, fps) for k, link in enumerate(links))
                )
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        finally:
            await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
    run.ages.sort()
    return run


async def _stream(run: Run, k: int, link: Link, data: bytes, fps: float) -> None:
    answered: set[int] = set()
    last_reply = [time.monotonic()]
    oldest = [0.0]  # the oldest age at a result so far

    async def reader() -> None:
        while True:
            try:
                msg = await link.recv()
            except EndOfStream:
                return
            now = time.monotonic()
            last_reply[0] = now
            seqs = msg.get("seqs") or ([msg["seq"]] if "seq" in msg else [])
            for s in seqs:
                run.twice += s in answered
                answered.add(s)
            kind = msg.get("type")
            if kind == "result":
                run.results += 1
                run.per_stream[k] += 1
                age = now - link.sent_at[msg["seq"]]
                run.ages.append((now - run.t0, age))
                oldest[0] = max(oldest[0], age)
            elif kind == "dropped":
                run.dropped += len(seqs)
            elif kind == "error":
                run.errors += len(seqs)

    task = asyncio.create_task(reader(), name=f"bench-reader-{k}")
    try:
        period = 1.0 / fps
        start = run.t0 + k * period / len(run.per_stream)
        tick = 0
        while start + tick * period - run.t0 < run.seconds and not task.done():
            await asyncio.sleep(max(0.0, start + tick * period - time.monotonic()))
            await link.send(data)
            now_tick = int((time.monotonic() - start) / period) + 1  # the next tick due
            run.skipped += max(0, now_tick - tick - 1)
            tick = max(tick + 1, now_tick)
        end = time.monotonic() + SETTLE_MAX_S
        while len(answered) < len(link.sent_at) and not task.done():
            now = time.monotonic()
            if now > end or now - last_reply[0] > QUIET_S + 2 * oldest[0]:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
    if isinstance(outcome, Exception):  # the reader failed: not a figure to report
        raise outcome
    sent = len(link.sent_at)
    run.sent += sent
    run.skipped += link.skipped
    run.unanswered += sent - len(answered & set(range(sent)))


async def _progress(run: Run, every: float) -> None:
    """A line on stderr every `every` seconds of a long run (none when `every` is 0)."""
    if not every:
        return
    while True:
        await asyncio.sleep(every)
        done = time.monotonic() - run.t0
        if done < run.seconds:
            print(
                f"    ... {done:.0f} of {run.seconds:.0f} s, {run.results} results",
                file=sys.stderr,
                flush=True,
            )


def _drive_in_process(load: Load, start_at: float, progress_every: float) -> Run:
    return asyncio.run(drive(load, start_at, progress_every))


def drive_from(clients: int, load: Load, progress_every: float = 0.0) -> Run:
    """`drive` from `clients` separate processes (streams spread over them), merged: on a
    many-core machine one Python client cannot offer what the gateway can serve."""
    streams = load.streams
    clients = max(1, min(clients, streams))
    if clients == 1:
        return asyncio.run(drive(load, 0.0, progress_every))
    shares = [streams // clients + (i < streams % clients) for i in range(clients)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(clients, mp_context=ctx) as pool:
        start_at = time.monotonic() + PROCESS_LEAD_S + 0.02 * streams
        futures = [
            pool.submit(
                _drive_in_process,
                replace(load, streams=n),
                start_at,
                progress_every if i == 0 else 0.0,
            )
            for i, n in enumerate(shares)
        ]
        return merge([f.result() for f in futures])
