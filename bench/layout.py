"""Thread layout benchmark: several single-threaded sessions against one multi-threaded one.

For each model, on this machine, in this run, frames per second of raw ONNX Runtime inference:
  - `k x 1`: k sessions of one intra-op thread, run by k threads at once (frames in parallel);
  - `1 x k`: one session of k threads, run by one thread (each frame uses every core);
  - `1 x k, batch b`: the same with batches of b (for models with a dynamic batch axis).
The automatic layout in edge/inference/engine.py (`choose_layout`) follows what this shows.

    python bench/layout.py --seconds 5
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent


def session(path: Path, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """A random input; dynamic axes become batch x 3 x 480 x 640 (NCHW text detector)."""
    inp = sess.get_inputs()[0]
    fill = [batch, 3, 480, 640]
    shape = [d if isinstance(d, int) else fill[i] for i, d in enumerate(inp.shape)]
    return {inp.name: np.random.default_rng(0).random(shape, np.float32)}


def timed(callers: int, seconds: float, step: Callable[[int], int]) -> float:
    """Frames per second with `callers` threads each calling `step(index)` (which returns
    the frames it handled) for `seconds`, after one uncounted call each (a first run may
    pick kernels)."""
    for i in range(callers):
        step(i)
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            counts[i] += step(i)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def run_parallel(sessions: list[ort.InferenceSession], batch: int, seconds: float) -> float:
    feeds = [feed(s, batch) for s in sessions]

    def step(i: int) -> int:
        sessions[i].run(None, feeds[i])
        return batch

    return timed(len(sessions), seconds, step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    k = os.cpu_count() or 1
    print(f"machine: {k} cores, onnxruntime {ort.__version__}")
    for name, batches in (("blazeface", (1,)), ("ppocr_det", (1, 2, 4))):
        path = args.models / name / "1" / "model.onnx"
        many = [session(path, 1) for _ in range(k)]
        one = session(path, k)
        for b in batches:
            a = run_parallel(many, b, args.seconds)
            c = run_parallel([one], b, args.seconds)
            d = run_parallel([one] * k, b, args.seconds)
            print(
                f"{name:10s} batch {b}: {k}x1 sessions {a:7.1f} fps | 1x{k} one caller "
                f"{c:7.1f} fps | 1x{k} {k} callers {d:7.1f} fps"
            )


if __name__ == "__main__":
    main()
