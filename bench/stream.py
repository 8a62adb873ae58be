"""Stream benchmark: the gateway under overload against the same stages in a plain loop.

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
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.decode import decode  # noqa: E402
from edge.metrics import STAGES  # noqa: E402
from edge.modelspec import ModelSpec  # noqa: E402
from edge.tasks import get_task  # noqa: E402
from tests.imagedata import sample_image  # noqa: E402


def frame_bytes(size: tuple[int, int], image: str = "astronaut.png") -> bytes:
    im = PILImage.open(sample_image(image)).convert("RGB").resize(size)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


ORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "xnnpack": "XnnpackExecutionProvider", "cpu": "CPUExecutionProvider"}  # fmt: skip


def baseline(
    models: Path, model: str, data: bytes, seconds: float, providers: list[str]
) -> dict[str, float]:
    """The same stages, back to back, in one thread."""
    spec = ModelSpec.load(models / model)
    version = max(
        (d for d in (models / model).iterdir() if (d / "model.onnx").exists()),
        key=lambda d: int(d.name) if d.name.isdigit() else -1,
    )
    task = get_task(spec.task)(spec)
    best: dict[str, float] = {}
    for threads in (1, 0):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(version / "model.onnx"), opts, providers=providers)
        name = sess.get_inputs()[0].name
        fit = task.decode_hint()
        n, t_dec, t_inf = 0, 0.0, 0.0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            image = decode(data, fit, 1 << 30)
            tensor, ctx = task.preprocess(image)
            t1 = time.perf_counter()
            outputs = sess.run(None, {name: tensor[None]})
            t2 = time.perf_counter()
            task.postprocess([o[0] for o in outputs], ctx, image, spec.threshold)
            n += 1
            t_dec += t1 - t0
            t_inf += t2 - t1
        elapsed = time.perf_counter() - start
        row = {
            "fps": n / elapsed,
            "threads": float(threads),
            "decode_pre_ms": t_dec / n * 1e3,
            "inference_ms": t_inf / n * 1e3,
        }
        print(
            f"  baseline threads={threads or 'default'}: {row['fps']:.0f} fps "
            f"(decode+pre {row['decode_pre_ms']:.2f} ms, inference {row['inference_ms']:.2f} ms)"
        )
        if row["fps"] > best.get("fps", 0):
            best = row
    return best


def _loop_in_process(
    models: Path, model: str, data: bytes, providers: list[str], start_at: float, seconds: float
) -> float:
    """One of the P baseline processes: load, wait for the common start, loop, frames/s."""
    spec = ModelSpec.load(models / model)
    task = get_task(spec.task)(spec)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(models / model / "1" / "model.onnx"), opts, providers=providers)
    name = sess.get_inputs()[0].name
    fit = task.decode_hint()
    time.sleep(max(0.0, start_at - time.monotonic()))  # CLOCK_MONOTONIC: one clock for all
    n, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        image = decode(data, fit, 1 << 30)
        tensor, ctx = task.preprocess(image)
        outputs = sess.run(None, {name: tensor[None]})
        task.postprocess([o[0] for o in outputs], ctx, image, spec.threshold)
        n += 1
    return n / (time.monotonic() - start)


def baseline_processes(
    models: Path, model: str, data: bytes, seconds: float, providers: list[str]
) -> dict[str, float]:
    """What the machine can do: one plain loop per core, each its own process, summed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    p = os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(p, mp_context=ctx) as pool:
        start_at = time.monotonic() + 5.0 + 0.5 * p  # time for every process to load
        futures = [
            pool.submit(_loop_in_process, models, model, data, providers, start_at, seconds)
            for _ in range(p)
        ]
        rates = [f.result() for f in futures]
    total = sum(rates)
    print(
        f"  baseline {p} processes x 1 loop: {total:.0f} fps "
        f"(per process {min(rates):.0f} to {max(rates):.0f})"
    )
    return {"fps": total, "processes": float(p)}


class RawSession:
    """Raw ONNX Runtime throughput on already-preprocessed frames, for batching to be measured
    against: `sweep` finds the best over batch sizes (powers of two up to max_batch) and two
    session layouts (CPU: one session using every core, or one single-threaded session per
    core side by side; GPU: one session, or two side by side); `again` re-measures the best
    one, so it can be taken between the gateway's rounds while the machine's speed drifts."""

    def __init__(self, models: Path, model: str, data: bytes, providers: list[str]) -> None:
        spec = ModelSpec.load(models / model)
        task = get_task(spec.task)(spec)
        self.path = models / model / "1" / "model.onnx"
        self.tensor, _ = task.preprocess(decode(data, task.decode_hint(), 1 << 30))
        self.providers = providers
        self.gpu = providers[0] in (ORT_NAMES["tensorrt"], ORT_NAMES["cuda"])
        cores = os.cpu_count() or 1
        self.layouts = ((1, 1), (2, 1)) if self.gpu else ((1, cores), (cores, 1))
        self.sizes = sorted({1 << k for k in range(spec.max_batch.bit_length())} | {spec.max_batch})
        self.pools: dict[tuple[int, int], list[ort.InferenceSession]] = {}
        self.best: dict[str, float] = {}
        self.best_key = (1, 1, 1)

    def pool(self, sessions: int, threads: int) -> list[ort.InferenceSession]:
        if (sessions, threads) not in self.pools:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            self.pools[sessions, threads] = [
                ort.InferenceSession(str(self.path), opts, providers=self.providers)
                for _ in range(sessions)
            ]
        return self.pools[sessions, threads]

    def measure(self, sessions: int, threads: int, b: int, per: float) -> float:
        from concurrent.futures import ThreadPoolExecutor

        pool = self.pool(sessions, threads)
        name = pool[0].get_inputs()[0].name
        x = np.stack([self.tensor] * b)

        def loop(s: ort.InferenceSession) -> float:
            s.run(None, {name: x})  # a first run per shape may pick kernels: not counted
            s.run(None, {name: x})
            n = 0
            start = time.perf_counter()
            while time.perf_counter() - start < per:
                s.run(None, {name: x})
                n += x.shape[0]
            return n / (time.perf_counter() - start)

        with ThreadPoolExecutor(sessions) as ex:
            return sum(ex.map(loop, pool))

    def sweep(self, seconds: float) -> dict[str, float]:
        per = seconds / (len(self.layouts) * len(self.sizes))
        for sessions, threads in self.layouts:
            if self.gpu:
                print(f"  raw sessions run on {self.pool(sessions, threads)[0].get_providers()[0]}")
            for b in self.sizes:
                fps = self.measure(sessions, threads, b, per)
                print(
                    f"  raw: {sessions} session(s) x {threads} thread(s), batch {b}: {fps:.1f} fps"
                )
                if fps > self.best.get("fps", 0):
                    self.best |= {"fps": fps, "batch": float(b), "sessions": float(sessions)}
                    self.best_key = (sessions, threads, b)
                # the gateway's automatic layout: a single-threaded session per core (CPU), two
                # (GPU)
                if (sessions, threads) == self.layouts[1] and fps > self.best.get(
                    "own_layout_fps", 0
                ):
                    self.best["own_layout_fps"] = fps
        return self.best

    def again(self, per: float) -> float:
        return self.measure(*self.best_key, per)


async def drive(
    url: str, model: str, data: bytes, streams: int, fps: float, seconds: float
) -> dict[str, Any]:
    ages: list[tuple[float, float]] = []  # (arrival, age)
    per_stream = [0] * streams  # results each stream got, for fairness
    counts = {"result": 0, "dropped": 0, "error": 0, "sent": 0, "unanswered": 0, "twice": 0}
    ws_url = url.replace("http", "ws", 1) + f"/v1/stream?model={model}"

    async def one(http: aiohttp.ClientSession, k: int) -> None:
        ws = await http.ws_connect(ws_url, max_msg_size=0)
        await ws.receive_json()
        sent: dict[int, float] = {}
        answered: set[int] = set()

        async def reader() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                now = time.monotonic()
                seqs = m.get("seqs") or ([m["seq"]] if "seq" in m else [])
                for s in seqs:
                    counts["twice"] += s in answered
                    answered.add(s)
                if m["type"] == "result":
                    counts["result"] += 1
                    per_stream[k] += 1
                    ages.append((now, now - sent[m["seq"]]))
                elif m["type"] in counts:
                    counts[m["type"]] += len(seqs)

        rt = asyncio.create_task(reader())
        period = 1.0 / fps
        start = time.monotonic() + k * period / streams
        seq = 0
        while True:
            now = time.monotonic()
            if now - start > seconds:
                break
            due = start + seq * period
            if due > now:
                await asyncio.sleep(due - now)
            sent[seq] = time.monotonic()
            await ws.send_bytes(data)
            seq += 1
        counts["sent"] += seq
        for _ in range(300):  # every frame is answered within about one round: 30 s is ample
            if len(answered) >= seq:
                break
            await asyncio.sleep(0.1)
        counts["unanswered"] += seq - len(answered & set(range(seq)))
        await ws.close()
        rt.cancel()

    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        await asyncio.gather(*(one(http, k) for k in range(streams)))
        elapsed = time.monotonic() - t0
    return {
        "ages": ages,
        "counts": counts,
        "elapsed": min(elapsed, seconds),
        "per_stream": per_stream,
    }


def _drive_in_process(
    url: str, model: str, data: bytes, streams: int, fps: float, seconds: float, start_at: float
) -> dict[str, Any]:
    time.sleep(max(0.0, start_at - time.monotonic()))
    return asyncio.run(drive(url, model, data, streams, fps, seconds))


def drive_from(
    clients: int, url: str, model: str, data: bytes, streams: int, fps: float, seconds: float
) -> dict[str, Any]:
    """`drive` from `clients` separate processes (streams spread over them), merged: on a
    many-core machine one Python client cannot offer what the gateway can serve."""
    if clients <= 1:
        return asyncio.run(drive(url, model, data, streams, fps, seconds))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [streams // clients + (i < streams % clients) for i in range(clients)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(clients, mp_context=ctx) as pool:
        start_at = time.monotonic() + 3.0
        futures = [
            pool.submit(_drive_in_process, url, model, data, n, fps, seconds, start_at)
            for n in shares
            if n
        ]
        runs = [f.result() for f in futures]
    return {
        "ages": sorted(a for r in runs for a in r["ages"]),
        "per_stream": [n for r in runs for n in r["per_stream"]],
        "counts": {k: sum(r["counts"][k] for r in runs) for k in runs[0]["counts"]},
        "elapsed": max(r["elapsed"] for r in runs),
    }


async def batch_sizes(url: str, model: str) -> dict[str, float]:
    """From the gateway's /metrics: the mean batch size, the share of batches over one, the
    batch limit, and the mean time per stage in milliseconds (decode, preprocess and
    postprocess per frame; the session call and the whole model run per batch)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    got: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.labels.get("model") != model:
                continue
            kind = smp.name.rsplit("_", 1)[1]
            if smp.name.startswith("edge_batch_size"):
                got[kind + smp.labels.get("le", "")] = smp.value
            elif smp.name == "edge_batch_limit":
                got["limit"] = smp.value
            elif smp.name.startswith("edge_stage_seconds_") and kind in ("sum", "count"):
                got[f"{smp.labels['stage']}_{kind}"] = smp.value
            elif smp.name.startswith("edge_inference_latency_seconds_") and kind in (
                "sum",
                "count",
            ):
                got[f"run_{kind}"] = smp.value
    count = got.get("count", 0.0) or 1.0
    out = {
        "mean": got.get("sum", 0.0) / count,
        "over_one": 1 - got.get("bucket1.0", 0.0) / count,
        "limit": got.get("limit", 0.0),
    }
    for stage in (*STAGES, "run"):  # run: edge_inference_latency_seconds
        out[f"{stage}_ms"] = 1e3 * got.get(f"{stage}_sum", 0.0) / (got.get(f"{stage}_count") or 1.0)
    return out


def summarize(
    ages: list[tuple[float, float]], run_start: float, seconds: float
) -> dict[str, float]:
    vals = sorted(a for _, a in ages)
    q = lambda p: vals[min(len(vals) - 1, int(p * len(vals)))] * 1e3  # noqa: E731
    third = seconds / 3
    first = [a for t, a in ages if t - run_start < third]
    last = [a for t, a in ages if t - run_start > 2 * third]
    return {
        "p50_ms": q(0.5),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
        "max_ms": vals[-1] * 1e3,
        "first_third_p50_ms": statistics.median(first) * 1e3 if first else float("nan"),
        "last_third_p50_ms": statistics.median(last) * 1e3 if last else float("nan"),
    }


def with_max_batch(models: Path, model: str, max_batch: int) -> Path:
    """A copy of one model's directory with another max_batch (files copied: the gateway
    refuses symlinks in its repository)."""
    root = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    shutil.copytree(models / model, root / model)
    toml = root / model / "model.toml"
    text, n = re.subn(r"(?m)^max_batch\s*=.*$", f"max_batch = {max_batch}", toml.read_text())
    toml.write_text(text if n else f"max_batch = {max_batch}\n" + text)
    return root


def serve_command(models: Path, port: int, *flags: str) -> list[str]:
    """`edge serve` on 127.0.0.1:`port` with this interpreter, as a separate process."""
    return [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--models", str(models), *flags]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("gateway did not become ready")


async def sink_counts(url: str) -> dict[str, float]:
    """From /metrics: messages published and dropped over every sink, and the sinks connected."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    out = {"published": 0.0, "dropped": 0.0, "connected": 0.0}
    names = {
        "edge_sink_published_total": "published",
        "edge_sink_dropped_total": "dropped",
        "edge_sink_connected": "connected",
    }
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name in names:
                out[names[sample.name]] += sample.value
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children, alive ones."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


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
                asyncio.run(wait_ready(url))
                cpu0 = tree_cpu(proc.pid)
                run = drive_from(
                    args.clients, url, args.model, data, args.streams, args.fps, args.seconds
                )
                used = tree_cpu(proc.pid) - cpu0
                counted = asyncio.run(sink_counts(url))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            rate = run["counts"]["result"] / run["elapsed"]
            rates[mode].append(rate)
            cpu[mode].append(used * 1e3 / max(1, run["counts"]["result"]))
            extra = (
                f"; sinks: {counted['published']:.0f} published, {counted['dropped']:.0f} "
                f"dropped, {counted['connected']:.0f} connected"
                if mode == "on"
                else ""
            )
            print(
                f"  sinks {mode}: {rate:.1f} results/s, gateway CPU {cpu[mode][-1]:.2f} ms a "
                f"result, replies {run['counts']}{extra}"
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
    prefs = [p.strip() for p in args.providers.split(",")]
    providers = [ORT_NAMES[p] for p in prefs] + (["CPUExecutionProvider"] * ("cpu" not in prefs))
    models = args.models
    if args.max_batch:
        models = with_max_batch(args.models, args.model, args.max_batch)
    w, h = (int(v) for v in args.size.split("x"))
    data = frame_bytes((w, h), args.image)
    print(
        f"machine: {os.cpu_count()} cores; frame {w}x{h} JPEG {len(data)} bytes; model {args.model}"
    )
    if args.baseline == "processes":
        print("baseline (a plain loop per core, each its own process, no network):")
        base = baseline_processes(models, args.model, data, min(10.0, args.seconds / 3), providers)
    elif args.baseline == "loop":
        print("baseline (plain loop, no network):")
        base = baseline(models, args.model, data, min(10.0, args.seconds / 3), providers)
    else:
        print("baseline (raw ONNX Runtime session, best batch):")
        raw = RawSession(models, args.model, data, providers)
        base = raw.sweep(min(40.0, args.seconds / 1.5))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # every benchmark stream comes from one loopback address: the per-client frame-rate limit
    # would measure itself, not the scheduler
    env = {
        **os.environ,
        "EDGE_LOG_LEVEL": "warning",
        "EDGE_WATCH_MODELS_S": "0",
        "EDGE_MAX_FPS_PER_CLIENT": str(args.max_fps_per_client),
        "EDGE_MAX_FPS_PER_STREAM": "0",
        "EDGE_PROVIDERS": args.providers,
        "EDGE_SINKS": args.sinks,
        "EDGE_GRPC_PORT": "0",  # --grpc gives it a free port
    }
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
        asyncio.run(wait_ready(url))
        print(
            f"gateway: {args.streams} streams x {args.fps:g} fps offered "
            f"= {args.streams * args.fps:.0f} fps, for {args.seconds:g} s"
        )
        t0 = time.monotonic()
        rounds = args.rounds if args.baseline == "raw-batch" else 1
        chunk = args.seconds / rounds
        runs, raw_around, per_round = [], [], []
        if rounds > 1:
            # The sweep's best is the highest of several noisy figures: taken again, once, so
            # the first round is paired with a plain measurement like the others.
            raw_around.append(raw.again(min(8.0, chunk / 2)))
            print(f"  raw again before round 1: {raw_around[-1]:.1f}")
        for r in range(rounds):
            run = drive_from(args.clients, url, args.model, data, args.streams, args.fps, chunk)
            runs.append(run)
            if rounds > 1:  # the gateway idles meanwhile: the same cores, minutes apart at most
                raw_around.append(raw.again(min(8.0, chunk / 2)))
                got = run["counts"]["result"] / run["elapsed"]
                per_round.append(got)
                print(
                    f"  round {r + 1}: gateway {got:.1f} results/s, "
                    f"raw after it {raw_around[-1]:.1f}"
                )
        run = {
            "ages": [a for x in runs for a in x["ages"]],
            "counts": {k: sum(x["counts"][k] for x in runs) for k in runs[0]["counts"]},
            "elapsed": sum(x["elapsed"] for x in runs),
            "per_stream": [sum(col) for col in zip(*(x["per_stream"] for x in runs), strict=True)],
        }
        batches = asyncio.run(batch_sizes(url, args.model))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    counts = run["counts"]
    assert isinstance(counts, dict)
    ages = run["ages"]
    assert isinstance(ages, list)
    fps = counts["result"] / float(run["elapsed"])  # type: ignore[arg-type]
    s = summarize(ages, t0, args.seconds)
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
    print(f"  replies: {counts}")
    shares = run["per_stream"]
    assert isinstance(shares, list)
    jain = sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares) or 1)
    print(f"  fairness over streams (Jain): {jain:.3f}, results {min(shares)}..{max(shares)} each")
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
                    "counts": counts,
                    "age": s,
                    "batches": batches,
                    "raw_around_rounds": raw_around,
                    "gateway_per_round": per_round,
                    "fairness": jain,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
