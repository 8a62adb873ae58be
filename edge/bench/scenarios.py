"""The standard runs, for one model on one server:

- unloaded: one stream at a low rate, for latency alone;
- load: `streams` streams offering a multiple of the ceiling in all (the report's headline is
  1.5x: more than the machine can serve, so what the scheduler does under overload shows);
- fairness: many streams at the headline overload, for how evenly results are shared;
- age: a long run at the headline overload, against the gateway and the naive in-order
  server in turn, for the frame age over time.

Each returns what the clients observed and the server's CPU time over the run's window
(sampled from /proc while it runs, so connecting and settling are not counted)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.bench.load import Load, drive_from
from edge.bench.results import Measured
from edge.bench.servers import Server

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How long and how wide each run is."""

    seconds: float  # each load and fairness run
    unloaded_seconds: float
    age_seconds: float  # the long overload, per server
    factors: tuple[float, ...]  # offered load, as multiples of the ceiling
    streams: int
    fairness_streams: int
    ceiling_seconds: float  # each measurement of the ceiling
    ceiling_repeats: int
    baseline_seconds: float  # the plain loop and the raw sessions' sweep
    clients: int  # client processes
    headline: float = 1.5  # the overload of the table's main rows

    def words(self) -> dict[str, str]:
        return {
            "load runs": f"{self.seconds:g} s each, {self.streams} streams, offered "
            + ", ".join(f"{f:g}x" for f in self.factors)
            + " the ceiling",
            "unloaded run": f"{self.unloaded_seconds:g} s, 1 stream",
            "fairness run": f"{self.seconds:g} s, {self.fairness_streams} streams at "
            f"{self.headline:g}x",
            "frame-age run": f"{self.age_seconds:g} s per server, {self.streams} streams at "
            f"{self.headline:g}x",
            "ceiling": f"{self.ceiling_repeats} measurements of {self.ceiling_seconds:g} s "
            "before the runs, one after",
            "client processes": str(self.clients),
        }


FULL = Plan(
    seconds=20.0, unloaded_seconds=10.0, age_seconds=60.0, factors=(0.5, 1.0, 1.5, 3.0),
    streams=8, fairness_streams=32, ceiling_seconds=5.0, ceiling_repeats=3,
    baseline_seconds=6.0, clients=1,
)  # fmt: skip
QUICK = Plan(
    seconds=1.0, unloaded_seconds=1.0, age_seconds=2.0, factors=(0.5, 1.5), streams=3,
    fairness_streams=6, ceiling_seconds=0.3, ceiling_repeats=2, baseline_seconds=0.4,
    clients=1,
)  # fmt: skip


class CpuSampler:
    """A thread that samples a server's CPU time every INTERVAL_S while a run goes on, so the
    CPU over the run's own window can be read afterwards (`between`). The `with` block owns
    the thread: it is stopped and joined when the block ends."""

    INTERVAL_S = 0.1

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="bench-cpu", daemon=True)

    def _sample(self) -> None:
        while True:
            cpu = self.server.cpu_seconds()
            if cpu is None:
                return
            self.samples.append((time.monotonic(), cpu))
            if self.stop.wait(self.INTERVAL_S):
                return

    def __enter__(self) -> CpuSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        cpu = self.server.cpu_seconds()
        if cpu is not None:
            self.samples.append((time.monotonic(), cpu))

    def between(self, t0: float, t1: float) -> float | None:
        """CPU seconds used from t0 to t1 (linear between samples); None when not sampled."""
        if len(self.samples) < 2:
            return None
        return self._at(t1) - self._at(t0)

    def _at(self, t: float) -> float:
        s = self.samples
        if t <= s[0][0]:
            return s[0][1]
        for (ta, ca), (tb, cb) in zip(s, s[1:], strict=False):
            if ta <= t <= tb:
                return ca + (cb - ca) * (t - ta) / ((tb - ta) or 1.0)
        return s[-1][1]


def measure(
    server: Server, transport: str, model: str, data: bytes, streams: int, fps: float,
    seconds: float, plan: Plan, scenario: str, kind: str, factor: float,
) -> Measured:  # fmt: skip
    """One load run against `server`, with its CPU time over the run's window."""
    every = 10.0 if seconds >= 20 else 0.0
    load = Load(transport, server.address(transport), model, data, streams, fps, seconds)
    with CpuSampler(server) as cpu:
        run = drive_from(plan.clients, load, every)
    used = cpu.between(run.t0, run.t0 + seconds)
    return Measured(scenario, kind, transport, factor, run, used)


def gateway_runs(
    server: Server, transport: str, model: str, data: bytes, ceiling: float, plan: Plan, say: Say
) -> list[Measured]:
    """Unloaded, the load sweep and fairness, against the gateway over one transport."""

    def run(scenario: str, what: str, streams: int, fps: float, seconds: float,
            factor: float) -> Measured:  # fmt: skip
        each = "1 stream" if streams == 1 else f"{streams} streams"
        say(f"{model} over {transport}: {what}, {each} x {fps:.1f} fps, {seconds:g} s")
        return measure(server, transport, model, data, streams, fps, seconds, plan, scenario,
                       "gateway", factor)  # fmt: skip

    cores = float(os.cpu_count() or 1)
    fps = max(1.0, min(30.0, 0.25 * ceiling / cores))  # a quarter of one core's loop
    out = [run("unloaded", "unloaded", 1, fps, plan.unloaded_seconds, fps / ceiling)]
    for factor in plan.factors:
        per_stream = factor * ceiling / plan.streams
        what = f"{factor:g}x the ceiling"
        out.append(run("load", what, plan.streams, per_stream, plan.seconds, factor))
    per_stream = plan.headline * ceiling / plan.fairness_streams
    fairness = run("fairness", "fairness", plan.fairness_streams, per_stream, plan.seconds,
                   plan.headline)  # fmt: skip
    return [*out, fairness]


def age_run(
    server: Server, kind: str, model: str, data: bytes, ceiling: float, plan: Plan, say: Say
) -> Measured:
    """The long overload against one server (`kind`: gateway or naive), over WebSocket."""
    per_stream = plan.headline * ceiling / plan.streams
    say(
        f"{model}: frame age on the {kind} server, {plan.streams} streams x {per_stream:.1f} "
        f"fps ({plan.headline:g}x), {plan.age_seconds:g} s"
    )
    return measure(server, "websocket", model, data, plan.streams, per_stream,
                   plan.age_seconds, plan, "age", kind, plan.headline)  # fmt: skip


def progress(started: float) -> Say:
    """Progress lines on stderr, each with the time since `started`."""

    def say(text: str) -> None:
        elapsed = int(time.monotonic() - started)
        print(f"[edge bench {elapsed // 60:02d}:{elapsed % 60:02d}] {text}", file=sys.stderr,
              flush=True)  # fmt: skip

    return say
