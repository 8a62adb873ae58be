"""Stream benchmark: the gateway under overload against the same stages in a plain loop.

`edge bench` (edge/bench/) runs the standard scenarios and writes the report
(docs/benchmarks.md); this script keeps the one-off measurements built from the same parts:
one configuration at a time, raw-batch rounds, result sinks on and off.

Runs, on this machine and in this one run:
  1. baseline, one of:
     - `processes` (the default): what the machine can do. P separate processes (P = the
       cores), each a plain loop of the same stages (decode, preprocess, one single-threaded
       session run, postprocess) on the same frame, no network, started together, summed;
     - `loop`: the same stages in one plain Python loop (the best of a single-threaded
       session and ORT's default threads);
     - `raw-batch`: the session alone at its best batch size and layout;
  2. the gateway (`edge serve`, a separate process, `--processes` as given or auto) with N
     WebSocket streams, each sending frames at --fps (or --overload times the baseline, spread
     over the streams), from --clients separate client processes, for --seconds.
Reports results per second as a ratio to the baseline, the age of the frame behind each result
as the client measures it (send to result), its percentiles, and whether it drifts: the median
age of the last third of the run against the first third.

`--grpc` drives the one gateway over both transports under the same offered load, the
WebSocket then gRPC's PredictStream (bench/grpcdrive.py), --rounds times, and prints the gRPC
figures against the WebSocket's as ratios.

`--sinks URL,...` runs the gateway with those result sinks (EDGE_SINKS). `--sinks-compare`
instead runs it --rounds times (at least 2) sinks off then on, each --seconds long under the
same offered load, and prints results per second, and the gateway's CPU time per result, with
sinks against without (docs/sinks.md);
without --sinks it starts its own mosquitto and nats-server on loopback ports (Debian's
packages, `make brokers`) and publishes to both, with nobody subscribed.

    python bench/stream.py --streams 8 --overload 1.5 --seconds 60
    python bench/stream.py --streams 48 --overload 1.5 --clients 4 --processes 16
    python bench/stream.py --model ppocr_det --baseline raw-batch --streams 8 --fps 6
    python bench/stream.py --model ppocr_det --baseline raw-batch --providers cuda \
        --max-batch 16 --streams 64 --fps 30          # on a GPU with onnxruntime-gpu
    python bench/stream.py --overload 1.5 --seconds 20 --sinks-compare
    python bench/stream.py --overload 1.5 --seconds 20 --rounds 3 --grpc
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.bench.baselines import CeilingPool, RawSession, ort_providers, plain_loop  # noqa: E402
from edge.bench.frames import frame_jpeg  # noqa: E402
from edge.bench.load import Load, Run, drive_from  # noqa: E402
from edge.bench.servers import (  # noqa: E402
    Server,
    batch_sizes,
    free_port,
    gateway_env,
    scratch_repository,
    serve_command,
    sink_counts,
    tree_cpu,
    wait_ready,
)
from edge.bench.stats import jain, percentile  # noqa: E402
from tests.imagedata import sample_image  # noqa: E402


def drive(
    clients: int, url: str, model: str, data: bytes, streams: int, fps: float, seconds: float
) -> Run:
    """`streams` WebSocket streams at `fps` each for `seconds`, from `clients` processes."""
    return drive_from(clients, Load("websocket", url, model, data, streams, fps, seconds))


def summarize(ages: list[tuple[float, float]], seconds: float) -> dict[str, float]:
    """Percentiles of the ages (ms), and the median age of the first and the last third of
    the run (ages: seconds since the run began, age)."""
    vals = [a * 1e3 for _, a in ages]
    third = seconds / 3
    first = [a * 1e3 for t, a in ages if t < third]
    last = [a * 1e3 for t, a in ages if 2 * third < t <= seconds]
    return {
        "p50_ms": percentile(vals, 0.5),
        "p95_ms": percentile(vals, 0.95),
        "p99_ms": percentile(vals, 0.99),
        "max_ms": max(vals, default=float("nan")),
        "first_third_p50_ms": statistics.median(first) if first else float("nan"),
        "last_third_p50_ms": statistics.median(last) if last else float("nan"),
    }


def counts(run: Run) -> dict[str, int]:
    keys = ("results", "dropped", "errors", "sent", "skipped", "unanswered", "twice")
    return {k: getattr(run, k) for k in keys}


def compare_sinks(
    args: argparse.Namespace, models: Path, data: bytes, env: dict[str, str], flags: tuple[str, ...]
) -> None:
    """The gateway without sinks and with them, alternately, under the same offered load, in
    this one run: results per second with sinks against without."""
    brokers = []
    sinks = args.sinks
    scratch = Path(tempfile.mkdtemp(prefix="edge-bench-brokers-"))
    if not sinks:
        from tests.sinks_util import mosquitto, nats_server

        brokers = [mosquitto(scratch), nats_server(scratch)]
        for b in brokers:
            b.start()
        sinks = f"mqtt://127.0.0.1:{brokers[0].port}/edge,nats://127.0.0.1:{brokers[1].port}/edge"
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # gateway CPU ms per result
    try:
        for mode in ("off", "on") * max(2, args.rounds):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            run_env = {**env, "EDGE_SINKS": sinks if mode == "on" else ""}
            cmd = serve_command(models, port, *flags, "--processes", args.processes)
            proc = subprocess.Popen(cmd, env=run_env)
            try:
                asyncio.run(wait_ready(Server(url, proc)))
                cpu0 = tree_cpu(proc.pid)
                run = drive(
                    args.clients, url, args.model, data, args.streams, args.fps, args.seconds
                )
                used = tree_cpu(proc.pid) - cpu0
                counted = asyncio.run(sink_counts(url))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            rate = run.throughput()
            rates[mode].append(rate)
            cpu[mode].append(used * 1e3 / max(1, run.results))
            extra = (
                f"; sinks: {counted['published']:.0f} published, {counted['dropped']:.0f} "
                f"dropped, {counted['connected']:.0f} connected"
                if mode == "on"
                else ""
            )
            print(
                f"  sinks {mode}: {rate:.1f} results/s, gateway CPU {cpu[mode][-1]:.2f} ms a "
                f"result, replies {counts(run)}{extra}"
            )
    finally:
        for b in brokers:
            b.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    pairs = [on / off for off, on in zip(rates["off"], rates["on"], strict=True)]
    print(
        f"  results/s, sinks on / off: {sum(rates['on']) / sum(rates['off']):.3f}x over all "
        f"runs, median pair {statistics.median(pairs):.3f}x (each pair: "
        f"{', '.join(f'{p:.3f}x' for p in pairs)}; target >= 0.95x)"
    )
    costs = [on / off for off, on in zip(cpu["off"], cpu["on"], strict=True)]
    print(
        f"  gateway CPU a result, sinks on / off: median pair {statistics.median(costs):.3f}x "
        f"(each pair: {', '.join(f'{c:.3f}x' for c in costs)}; the box is shared: CPU per "
        "result moves less with the neighbours than results/s)"
    )


def compare_transports(
    args: argparse.Namespace, models: Path, data: bytes, env: dict[str, str], flags: tuple[str, ...]
) -> None:
    """One gateway, driven over the WebSocket and over gRPC alternately under the same offered
    load: results per second and frame ages, gRPC against the WebSocket."""
    from bench.grpcdrive import drive_grpc

    port, grpc_port = free_port(), free_port()
    url, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    cmd = serve_command(models, port, *flags, "--processes", args.processes)
    proc = subprocess.Popen([*cmd, "--grpc-port", str(grpc_port)], env=env)
    rates: dict[str, list[float]] = {"websocket": [], "grpc": []}
    p50: dict[str, list[float]] = {"websocket": [], "grpc": []}
    p99: dict[str, list[float]] = {"websocket": [], "grpc": []}
    try:
        asyncio.run(wait_ready(url))
        for _ in range(max(1, args.rounds)):
            for transport in ("websocket", "grpc"):
                t0 = time.monotonic()
                if transport == "websocket":
                    run = asyncio.run(
                        drive(url, args.model, data, args.streams, args.fps, args.seconds)
                    )
                else:
                    run = asyncio.run(
                        drive_grpc(target, args.model, data, args.streams, args.fps, args.seconds)
                    )
                rates[transport].append(run["counts"]["result"] / run["elapsed"])
                s = summarize(run["ages"], t0, args.seconds)
                p50[transport].append(s["p50_ms"])
                p99[transport].append(s["p99_ms"])
                print(
                    f"  {transport}: {rates[transport][-1]:.1f} results/s, age p50 "
                    f"{s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, drift "
                    f"{s['first_third_p50_ms']:.1f} -> {s['last_third_p50_ms']:.1f} ms, "
                    f"replies {run['counts']}"
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    pairs = [g / w for w, g in zip(rates["websocket"], rates["grpc"], strict=True)]
    print(
        f"  results/s, gRPC / WebSocket: {sum(rates['grpc']) / sum(rates['websocket']):.3f}x over "
        f"all rounds (each round: {', '.join(f'{p:.3f}x' for p in pairs)}); age p50 "
        f"{statistics.median(p50['grpc']) / statistics.median(p50['websocket']):.2f}x, p99 "
        f"{statistics.median(p99['grpc']) / statistics.median(p99['websocket']):.2f}x "
        "(medians over the rounds)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="blazeface")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--fps", type=float, default=60.0, help="per stream")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", default="640x480", help="frame size WxH")
    ap.add_argument("--workers", type=int, default=0, help="gateway workers per process (0: auto)")
    ap.add_argument("--processes", default="auto", help="gateway serving processes (auto: cores)")
    ap.add_argument(
        "--overload",
        type=float,
        help="offer this many times the baseline's frames/s in all (sets --fps per stream)",
    )
    ap.add_argument("--clients", type=int, default=1, help="client processes driving the streams")
    ap.add_argument(
        "--max-fps-per-client",
        type=int,
        default=0,
        help="the gateway's per-client frame limit (0: off; every stream here is one client)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--baseline",
        choices=["processes", "loop", "raw-batch"],
        default="processes",
        help="processes: a plain loop of every stage per core, each its own process, summed "
        "(what the machine can do); loop: one such loop; raw-batch: inference alone, best "
        "batch size (what batching is measured against)",
    )
    ap.add_argument("--image", default="astronaut.png", help="scikit-image sample to send")
    ap.add_argument(
        "--providers",
        default="cpu",
        help="execution providers for the baseline and the gateway (EDGE_PROVIDERS), e.g. cuda",
    )
    ap.add_argument("--max-batch", type=int, help="override the model's max_batch")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="raw-batch: split the gateway run into rounds and re-measure the best raw "
        "configuration after each (a noisy machine's speed drifts within minutes); "
        "--sinks-compare: pairs of runs, sinks off then on (at least 2)",
    )
    ap.add_argument("--sinks", default="", help="result sink URLs for the gateway (EDGE_SINKS)")
    ap.add_argument(
        "--sinks-compare",
        action="store_true",
        help="run the gateway without and with sinks, alternately, and print the ratio",
    )
    ap.add_argument(
        "--grpc",
        action="store_true",
        help="drive the gateway over the WebSocket and gRPC alternately, and print the ratio",
    )
    args = ap.parse_args()
    providers = ort_providers(args.providers)
    models = scratch_repository(args.models, [args.model], args.max_batch)
    w, h = (int(v) for v in args.size.split("x"))
    data = frame_jpeg((w, h), sample_image(args.image))
    print(
        f"machine: {os.cpu_count()} cores; frame {w}x{h} JPEG {len(data)} bytes; model {args.model}"
    )
    try:
        measure(args, models, data, providers)
    finally:
        shutil.rmtree(models, ignore_errors=True)


def measure(args: argparse.Namespace, models: Path, data: bytes, providers: list[str]) -> None:
    seconds = min(10.0, args.seconds / 3)
    base: dict[str, float]
    if args.baseline == "processes":
        print("baseline (a plain loop per core, each its own process, no network):")
        with CeilingPool(models, args.model, data, providers) as pool:
            got = pool.measure(seconds)
        print(f"  baseline {got.name} x 1 loop: {got.fps:.0f} fps ({got.detail})")
        base = {"fps": got.fps}
    elif args.baseline == "loop":
        print("baseline (plain loop, no network):")
        got = plain_loop(models, args.model, data, seconds, providers)
        print(f"  baseline: {got.fps:.0f} fps ({got.detail})")
        base = {"fps": got.fps}
    else:
        print("baseline (raw ONNX Runtime session, best batch):")
        raw = RawSession(models, args.model, data, providers)
        base = raw.sweep(min(40.0, args.seconds / 1.5))
        print("\n".join(f"  {line}" for line in raw.log))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # every benchmark stream comes from one loopback address: the per-client frame-rate limit
    # would measure itself, not the scheduler
    env = gateway_env(
        args.providers,
        {"EDGE_MAX_FPS_PER_CLIENT": str(args.max_fps_per_client), "EDGE_SINKS": args.sinks},
    )
    if args.overload:
        args.fps = args.overload * base["fps"] / args.streams
    flags = ("--workers", str(args.workers), "--max-streams", "1000")
    if args.grpc:
        print(
            f"gateway over the WebSocket and gRPC: {args.streams} streams x {args.fps:g} fps "
            f"offered = {args.streams * args.fps:.0f} fps, {args.seconds:g} s each"
        )
        compare_transports(args, models, data, env, flags)
        return
    if args.sinks_compare:
        print(
            f"gateway without and with sinks: {args.streams} streams x {args.fps:g} fps offered "
            f"= {args.streams * args.fps:.0f} fps, {args.seconds:g} s each"
        )
        compare_sinks(args, models, data, env, flags)
        return
    proc = subprocess.Popen(
        serve_command(models, port, *flags, "--processes", args.processes), env=env
    )
    try:
        asyncio.run(wait_ready(Server(url, proc)))
        print(
            f"gateway: {args.streams} streams x {args.fps:g} fps offered "
            f"= {args.streams * args.fps:.0f} fps, for {args.seconds:g} s"
        )
        rounds = args.rounds if args.baseline == "raw-batch" else 1
        chunk = args.seconds / rounds
        runs: list[Run] = []
        raw_around: list[float] = []
        per_round: list[float] = []
        if rounds > 1:
            # The sweep's best is the highest of several noisy figures: taken again, once, so
            # the first round is paired with a plain measurement like the others.
            raw_around.append(raw.again(min(8.0, chunk / 2)))
            print(f"  raw again before round 1: {raw_around[-1]:.1f}")
        for r in range(rounds):
            run = drive(args.clients, url, args.model, data, args.streams, args.fps, chunk)
            runs.append(run)
            if rounds > 1:  # the gateway idles meanwhile: the same cores, minutes apart at most
                raw_around.append(raw.again(min(8.0, chunk / 2)))
                got = run.throughput()
                per_round.append(got)
                print(
                    f"  round {r + 1}: gateway {got:.1f} results/s, "
                    f"raw after it {raw_around[-1]:.1f}"
                )
        # the rounds as one run: each round's ages after the rounds before it
        ages = [(t + i * chunk, a) for i, x in enumerate(runs) for t, a in x.ages]
        shares = [sum(col) for col in zip(*(x.per_stream for x in runs), strict=True)]
        replies = {k: sum(counts(x)[k] for x in runs) for k in counts(runs[0])}
        fps = sum(x.throughput() * x.seconds for x in runs) / args.seconds
        batches = asyncio.run(batch_sizes(url, args.model))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    s = summarize(ages, args.seconds)
    round_ms = args.streams / base["fps"] * 1e3
    frame_ms = 1e3 / base["fps"]
    print(f"  results/s {fps:.0f}  = {fps / base['fps']:.2f}x baseline ({base['fps']:.0f}/s)")
    if "own_layout_fps" in base:
        own = base["own_layout_fps"]
        print(f"  = {fps / own:.2f}x the raw session in the gateway's layout ({own:.0f}/s)")
    if raw_around:
        mean = statistics.fmean(raw_around)
        each = ", ".join(f"{v:.1f}" for v in raw_around)
        print(
            f"  = {fps / mean:.2f}x the best raw configuration re-measured before, between and "
            f"after the {len(per_round)} rounds (mean {mean:.1f}/s: {each})"
        )
        # each round against the raw runs just before and just after it: the machine's
        # speed during that round, as near as it can be had
        paired = [g / ((raw_around[i] + raw_around[i + 1]) / 2) for i, g in enumerate(per_round)]
        print(
            f"  per round, against the raw runs either side of it: "
            f"{', '.join(f'{v:.2f}x' for v in paired)}; median {statistics.median(paired):.2f}x"
        )
    print(f"  replies: {replies}")
    fair = jain(shares)
    print(f"  fairness over streams (Jain): {fair:.3f}, results {min(shares)}..{max(shares)} each")
    print(
        f"  frame age at result (client-measured): p50 {s['p50_ms']:.1f} ms, "
        f"p95 {s['p95_ms']:.1f}, p99 {s['p99_ms']:.1f}, max {s['max_ms']:.1f}"
    )
    print(
        f"  one round over all streams at baseline speed + one frame: "
        f"{round_ms + frame_ms:.1f} ms; p50 age / that = "
        f"{s['p50_ms'] / (round_ms + frame_ms):.2f}, p99 / that = "
        f"{s['p99_ms'] / (round_ms + frame_ms):.2f}"
    )
    print(
        f"  drift: median age first third {s['first_third_p50_ms']:.1f} ms, "
        f"last third {s['last_third_p50_ms']:.1f} ms"
    )
    print(
        f"  batches: mean size {batches['mean']:.2f}, {batches['over_one']:.0%} larger than one; "
        f"measured batch limit at the end {batches['limit']:.0f}"
    )
    print(
        f"  stages (mean ms): decode {batches['decode_ms']:.2f}, preprocess "
        f"{batches['preprocess_ms']:.2f}, postprocess {batches['postprocess_ms']:.2f} per frame; "
        f"session call {batches['session_ms']:.2f}, model run around it {batches['run_ms']:.2f} "
        f"per batch"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "baseline": base,
                    "fps": fps,
                    "ratio": fps / base["fps"],
                    "counts": replies,
                    "age": s,
                    "batches": batches,
                    "raw_around_rounds": raw_around,
                    "gateway_per_round": per_round,
                    "fairness": fair,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
