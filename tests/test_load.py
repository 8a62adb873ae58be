"""A load test bounded in time, and the same run as a soak.

Many concurrent streams (EDGE_LOAD_STREAMS, default 24) each send frames at a camera's rate
(EDGE_LOAD_FPS, default 30: more in total than the model runs on a small machine) to
`edge serve`, a separate process on loopback, for EDGE_LOAD_SECONDS (default 60), then stop.
Checked: every frame answered exactly once (and the server's counters agree), the server's
memory and file descriptors flat, the latency clients measure bounded and not growing.

    pytest tests/test_load.py -s                          # CI: two minutes, prints its figures
    EDGE_LOAD_SECONDS=3600 pytest tests/test_load.py -s   # soak: an hour
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess, jpeg, wait_ready
from tests.operations_util import scrape, total
from tests.pace import deadline, measure_frame_cost, wait_until

SECONDS = float(os.environ.get("EDGE_LOAD_SECONDS", "60"))
STREAMS = int(os.environ.get("EDGE_LOAD_STREAMS", "24"))
FPS = float(os.environ.get("EDGE_LOAD_FPS", "30"))
#: latency is compared between the first and the last window: 10 minutes, or a third of a run
WINDOW = min(600.0, SECONDS / 3)
#: memory is compared after a warm-up, while allocator pools and buffers reach their size
WARMUP = min(120.0, SECONDS / 4)
#: rounds over the streams (measured in the run) the median latency may span
MEDIAN_ROUNDS = 5

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SECONDS + 120)]


@dataclass
class Tally:
    """One stream's books, compact enough for an hour: per seq a send time and a reply count;
    per result its arrival time and latency."""

    sent_at: array = field(default_factory=lambda: array("d"))
    replies: bytearray = field(default_factory=bytearray)
    results: array = field(default_factory=lambda: array("d"))  # arrival, latency, ...
    kinds: dict[str, int] = field(default_factory=dict)

    def record(self, msg: dict, now: float) -> None:
        seqs = msg.get("seqs") or ([msg["seq"]] if "seq" in msg else [])
        key = msg["type"] + (":" + msg["reason"] if msg["type"] == "dropped" else "")
        if seqs:
            self.kinds[key] = self.kinds.get(key, 0) + len(seqs)
        for s in seqs:
            self.replies[s] += 1
        if msg["type"] == "result":
            self.results.extend((now, now - self.sent_at[msg["seq"]]))


async def drive(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> Tally:
    """One stream at FPS until `stop`; then every reply collected and the socket closed."""
    frame = jpeg("astronaut.png", (256, 256))
    ws = await http.ws_connect(url.replace("http", "ws", 1) + "/v1/stream")
    assert (await ws.receive_json(timeout=deadline()))["type"] == "hello"
    tally = Tally()

    async def read() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                tally.record(json.loads(msg.data), time.monotonic())

    reader = asyncio.create_task(read())
    start = time.monotonic()
    while not stop.is_set():
        delay = start + len(tally.sent_at) / FPS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.sent_at.append(time.monotonic())
        tally.replies.append(0)
        await ws.send_bytes(frame)
    # each stream has a frame running and one waiting at most (docs/protocol.md, rule 5)
    await wait_until(
        lambda: 0 not in tally.replies,
        deadline(frames=2, streams=STREAMS),
        lambda: f"replies to {[s for s, n in enumerate(tally.replies) if n == 0]}",
    )
    await ws.close()
    await asyncio.wait_for(reader, deadline())
    return tally


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    ts, vs = [t for t, _ in points], [v for _, v in points]
    return statistics.linear_regression(ts, vs).slope * 3600 if len(points) > 2 else 0.0


async def test_many_streams_at_full_rate_for_a_bounded_time(spawn_gateway, face_repo: Path) -> None:  # type: ignore[no-untyped-def]
    """Guards against leaks (memory or descriptors growing with frames served), lost or
    doubled replies under sustained load, and latency that creeps up over a long run."""
    # loopback: every stream comes from one address, so the per-address rate limit is off
    gw: GatewayProcess = spawn_gateway(
        face_repo, {"EDGE_MAX_FPS_PER_CLIENT": "0", "EDGE_MAX_STREAMS_PER_CLIENT": "0"}
    )
    await wait_ready(gw.url)
    frame_s = measure_frame_cost()  # one frame through the stages, on one thread, here
    fds_idle = gw.fds()
    samples: list[tuple[float, float, int]] = []  # time, rss MB, fds
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), gw.rss_mb(), gw.fds()))
            await asyncio.sleep(1.0)

    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        streams = [asyncio.create_task(drive(http, gw.url, stop)) for _ in range(STREAMS)]
        sampler = asyncio.create_task(sample())
        await asyncio.sleep(SECONDS)
        stop.set()
        tallies = await asyncio.wait_for(asyncio.gather(*streams), 2 * deadline(2, STREAMS))
        await sampler
        server = await scrape(http, gw.url)
    fds_after = gw.fds()

    sent = sum(len(t.sent_at) for t in tallies)
    once = sum(t.replies.count(1) for t in tallies)
    kinds: dict[str, int] = {}
    for t in tallies:
        for k, v in t.kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    results = [(t.results[i] - t0, t.results[i + 1]) for t in tallies
               for i in range(0, len(t.results), 2)]  # fmt: skip
    first = [lat for at, lat in results if at < WINDOW]
    last = [lat for at, lat in results if at > SECONDS - WINDOW]
    steady = [(t - t0, rss, fds) for t, rss, fds in samples if t - t0 > WARMUP]
    half = len(steady) // 2
    rss_a = statistics.median(r for _, r, _ in steady[:half])
    rss_b = statistics.median(r for _, r, _ in steady[half:])
    fds_a = max(f for _, _, f in steady[:half])
    fds_b = max(f for _, _, f in steady[half:])
    served = kinds.get("result", 0)
    # a round over the streams, in each window: each stream served once (a machine that gets
    # busier in one window serves fewer frames there, and its latency is no more rounds)
    round_s = STREAMS * SECONDS / max(1, served)
    round_first = STREAMS * WINDOW / max(1, len(first))
    round_last = STREAMS * WINDOW / max(1, len(last))
    ms = 1e3
    print(
        f"\nload: {STREAMS} streams x {FPS:g} fps for {SECONDS:g} s: {sent} frames sent, "
        f"{served / SECONDS:.0f} results/s (one thread runs the stages alone at "
        f"{1 / frame_s:.0f} frames/s), a round over the streams {round_s * ms:.0f} ms, "
        f"replies {kinds}\n"
        f"latency p50/p95 first {WINDOW:.0f} s {pct(first, 0.5) * ms:.0f}/"
        f"{pct(first, 0.95) * ms:.0f} ms (a round {round_first * ms:.0f} ms), last "
        f"{WINDOW:.0f} s {pct(last, 0.5) * ms:.0f}/{pct(last, 0.95) * ms:.0f} ms (a round "
        f"{round_last * ms:.0f} ms), overall p99 "
        f"{pct([lat for _, lat in results], 0.99) * ms:.0f} ms\n"
        f"server rss {samples[0][1]:.1f} MB at start, {rss_a:.1f} -> {rss_b:.1f} MB (medians "
        f"of the halves after {WARMUP:g} s warm-up: {rss_b - rss_a:+.1f} MB), trend "
        f"{slope_per_hour([(t, r) for t, r, _ in steady]):+.1f} MB/h\n"
        f"server fds {fds_idle} idle, {fds_a} -> {fds_b} under load (max of the halves, trend "
        f"{slope_per_hour([(t, f) for t, _, f in steady]):+.1f}/h), {fds_after} after"
    )
    assert once == sent, f"{sent - once} frames without exactly one reply"
    assert total(server, "edge_frames_received_total") == sent
    assert total(server, "edge_frames_processed_total") == kinds.get("result", 0)
    assert served > SECONDS / frame_s / 10, "served under a tenth of what one thread runs"
    assert rss_b - rss_a < 5.0, f"server memory grew {rss_b - rss_a:.1f} MB"
    assert fds_b <= fds_a + 2 and fds_after <= fds_idle + 2, "descriptors leak"
    # a queueing server's latency grows by a second a second: thousands of rounds in a run
    assert pct(first, 0.5) < MEDIAN_ROUNDS * round_first, "latency is not bounded"
    assert pct(last, 0.5) < MEDIAN_ROUNDS * round_last, "latency is not bounded"
    p95_rounds = (pct(first, 0.95) / round_first, pct(last, 0.95) / round_last)
    assert p95_rounds[1] < 2 * p95_rounds[0] + 1, f"latency grows, p95 in rounds {p95_rounds}"
