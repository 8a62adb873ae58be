"""What this machine can do with a model, without the gateway: the ceilings it is measured
against. Each runs the same stages a gateway worker runs (decode, preprocess, an ONNX Runtime
session, postprocess) on the same frame, with no network:

- `plain_loop`: one plain Python loop (the better of a single-threaded session and ORT's
  default threads);
- `CeilingPool`: one such loop per core, each its own process, started together and summed:
  the machine's ceiling, measured again and again (its drift says whether the machine is
  quiet enough to measure);
- `RawSession`: the session alone on preprocessed frames, at its best batch size and layout
  (what batching is measured against).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort

from edge.bench.stagerun import later_stages, read_regions
from edge.inference.decode import decode
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks import get_task

ORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "xnnpack": "XnnpackExecutionProvider", "cpu": "CPUExecutionProvider"}  # fmt: skip
#: how long the processes of a CeilingPool may take to start and load the model
LOAD_WITHIN_S = 180.0


def ort_providers(preference: str) -> list[str]:
    """`cpu`, `cuda,cpu`, ... as onnxruntime's provider names, the CPU always last."""
    names = [p.strip() for p in preference.split(",") if p.strip() and p.strip() != "auto"]
    return [ORT_NAMES[p] for p in names if p != "cpu"] + [ORT_NAMES["cpu"]]


def model_file(models: Path, model: str) -> Path:
    """The newest version's model.onnx of `model` in the repository `models`."""
    versions = [d for d in (models / model).iterdir() if (d / "model.onnx").exists()]
    if not versions:
        raise FileNotFoundError(f"no model.onnx under {models / model}")
    newest = max(versions, key=lambda d: int(d.name) if d.name.isdigit() else -1)
    return newest / "model.onnx"


@dataclass
class Baseline:
    """One ceiling: frames a second, CPU cores busy meanwhile, and how it was run."""

    name: str
    fps: float
    cpu_cores: float
    detail: str


class Stages:
    """One model's frame path outside the gateway, on one session of `threads` threads
    (0: ORT's default), its later stages included (one session each, the same threads)."""

    def __init__(self, models: Path, model: str, providers: list[str], threads: int) -> None:
        self.spec = ModelSpec.load(models / model)
        self.task = get_task(self.spec.task)(self.spec)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1 if threads == 1 else 0
        opts.log_severity_level = 3
        path = model_file(models, model)
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.feed = self.session.get_inputs()[0].name
        self.later = later_stages(path.parent, self.spec, providers, opts)

    def run(self, data: bytes) -> dict[str, Any]:
        """One frame through every stage: the payload a result carries."""
        image = decode(data, self.task.decode_hint(), 1 << 30)
        tensor, ctx = self.task.preprocess(image)
        outputs = self.session.run(None, {self.feed: tensor[None]})
        found = self.task.postprocess([o[0] for o in outputs], ctx, image, self.spec.threshold)
        return read_regions(self.later, self.spec, self.task.rows, image, found)

    def loop(self, data: bytes, seconds: float) -> tuple[float, float]:
        """Frames a second over `seconds` of back-to-back frames, and CPU cores busy."""
        self.run(data)  # the first run allocates
        n, cpu0, start = 0, time.process_time(), time.monotonic()
        while time.monotonic() - start < seconds:
            self.run(data)
            n += 1
        wall = time.monotonic() - start
        return n / wall, (time.process_time() - cpu0) / wall


def plain_loop(
    models: Path, model: str, data: bytes, seconds: float, providers: list[str]
) -> Baseline:
    """The same stages back to back in this process: the better of 1 thread and ORT's own."""
    best = Baseline("plain loop", 0.0, 0.0, "")
    for threads in (1, 0):
        fps, cores = Stages(models, model, providers, threads).loop(data, seconds / 2)
        if fps > best.fps:
            detail = f"one process, session of {threads or 'default'} thread(s)"
            best = Baseline("plain loop", fps, cores, detail)
    return best


def _ceiling_process(
    conn: Connection, models: Path, model: str, data: bytes, providers: list[str]
) -> None:
    """One process of a CeilingPool: load, say so, then one timed loop per order."""
    stages = Stages(models, model, providers, threads=1)
    stages.run(data)
    conn.send("ready")
    while (order := conn.recv()) is not None:
        start_at, seconds = order
        time.sleep(max(0.0, start_at - time.monotonic()))  # CLOCK_MONOTONIC: one for all
        conn.send(stages.loop(data, seconds))


class CeilingPool:
    """P processes (P = the cores), each a plain loop of a model's stages on one
    single-threaded session; `measure` runs them together and sums them: what the machine
    can do. The processes load once and wait between measurements; `close` stops them."""

    def __init__(
        self, models: Path, model: str, data: bytes, providers: list[str], processes: int = 0
    ) -> None:
        self.size = processes or os.cpu_count() or 1
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        try:
            for _ in range(self.size):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=_ceiling_process,
                    args=(theirs, models, model, data, providers),
                    daemon=True,
                )
                proc.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(proc)
            for conn in self.conns:
                self._answer(conn, LOAD_WITHIN_S)
        except BaseException:
            self.close()
            raise

    def _answer(self, conn: Connection, within: float) -> object:
        if not conn.poll(within):
            raise RuntimeError(f"a baseline process gave no answer within {within:.0f} s")
        try:
            return conn.recv()
        except EOFError:
            raise RuntimeError("a baseline process exited (see its error above)") from None

    def measure(self, seconds: float) -> Baseline:
        start_at = time.monotonic() + 0.2
        for conn in self.conns:
            conn.send((start_at, seconds))
        runs = [
            cast(tuple[float, float], self._answer(conn, seconds + LOAD_WITHIN_S))
            for conn in self.conns
        ]
        rates = [r[0] for r in runs]
        cores = sum(r[1] for r in runs)
        detail = f"{self.size} processes x 1 thread, {min(rates):.0f} to {max(rates):.0f} each"
        return Baseline(f"{self.size} processes", sum(rates), cores, detail)

    def close(self) -> None:
        """Stop every process (idempotent)."""
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.conns, self.procs = [], []

    def __enter__(self) -> CeilingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawSession:
    """Raw ONNX Runtime throughput on already-preprocessed frames, for batching to be measured
    against: `sweep` finds the best over batch sizes (powers of two up to max_batch) and two
    session layouts (CPU: one session using every core, or one single-threaded session per
    core side by side; GPU: one session, or two side by side); `again` re-measures the best
    one, so it can be taken between the gateway's rounds while the machine's speed drifts."""

    def __init__(self, models: Path, model: str, data: bytes, providers: list[str]) -> None:
        spec = ModelSpec.load(models / model)
        task = get_task(spec.task)(spec)
        self.path = model_file(models, model)
        self.tensor, _ = task.preprocess(decode(data, task.decode_hint(), 1 << 30))
        self.providers = providers
        self.gpu = providers[0] in (ORT_NAMES["tensorrt"], ORT_NAMES["cuda"])
        cores = os.cpu_count() or 1
        self.layouts = ((1, 1), (2, 1)) if self.gpu else ((1, cores), (cores, 1))
        self.sizes = sorted({1 << k for k in range(spec.max_batch.bit_length())} | {spec.max_batch})
        self.pools: dict[tuple[int, int], list[ort.InferenceSession]] = {}
        self.best: dict[str, float] = {}
        self.best_key = (1, 1, 1)
        self.log: list[str] = []

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
                provider = self.pool(sessions, threads)[0].get_providers()[0]
                self.log.append(f"raw sessions run on {provider}")
            for b in self.sizes:
                fps = self.measure(sessions, threads, b, per)
                self.log.append(
                    f"raw: {sessions} session(s) x {threads} thread(s), batch {b}: {fps:.1f} fps"
                )
                if fps > self.best.get("fps", 0):
                    self.best |= {"fps": fps, "batch": float(b), "sessions": float(sessions)}
                    self.best["threads"] = float(threads)
                    self.best_key = (sessions, threads, b)
                # the gateway's automatic layout: a single-threaded session per core (CPU),
                # two (GPU)
                if (sessions, threads) == self.layouts[1] and fps > self.best.get(
                    "own_layout_fps", 0
                ):
                    self.best["own_layout_fps"] = fps
        return self.best

    def again(self, per: float) -> float:
        return self.measure(*self.best_key, per)

    def baseline(self, seconds: float) -> Baseline:
        """The sweep's best layout and batch, measured once more (the sweep's best is the
        highest of several noisy figures), as a Baseline with the CPU cores it kept busy."""
        self.sweep(seconds)
        sessions, threads, batch = self.best_key
        cpu0, start = time.process_time(), time.monotonic()
        fps = self.again(max(0.5, seconds / 4))
        cores = (time.process_time() - cpu0) / (time.monotonic() - start)
        detail = f"{sessions} session(s) x {threads} thread(s), batch {batch}, inference only"
        return Baseline("raw sessions", fps, cores, detail)
