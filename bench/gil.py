"""What the GIL costs the workers: how long taking it back takes, and how long each host
stage waits for it beside a busy thread.

Every numpy call on a large array, every decoder call and every session run lets go of the
GIL; the worker must take it back afterwards. On this machine, in this run:

  1. a thread that lets go of the GIL in a loop (hashing 8 KB, which releases it) times each
     take-back: alone, beside a thread that runs Python without a pause (it is made to give
     the GIL up after the switch interval), and beside a thread that, like a busy event loop,
     runs Python for a while between short system calls (each lets go of the GIL for a moment
     and takes it straight back, so a waiting thread is woken, finds it taken again, and
     starts waiting afresh: it is never made to give it up);
  2. each host stage of a model (decode, preprocess, postprocess of one frame) alone and
     beside the Python-only thread, and the extra time in switch intervals: a lower bound on
     how often the stage lets go of the GIL (a take-back that finds the other thread not yet
     awake costs nothing, so some releases do not show).

    python bench/gil.py --model ppocr_det --image page.png
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge.bench.frames import frame_jpeg  # noqa: E402
from edge.inference import engine  # noqa: E402
from edge.inference.decode import decode  # noqa: E402
from edge.inference.modelspec import ModelSpec  # noqa: E402
from tests.imagedata import sample_image  # noqa: E402

_BLOCK = b"x" * 8192


class Beside:
    """Run `kind` ("python" or "io", with `burst_us` of Python between system calls) on a
    thread of its own for the duration of a `with` block."""

    def __init__(self, kind: str, burst_us: float = 100.0) -> None:
        self._kind, self._burst = kind, burst_us / 1e6
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        a, b = socket.socketpair()
        with a, b:
            while not self._stop.is_set():
                until = time.perf_counter() + self._burst
                while time.perf_counter() < until:
                    pass
                if self._kind == "io":
                    a.send(b"x")
                    b.recv(16)

    def __enter__(self) -> Beside:
        self._thread.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def per_call(fn: Callable[[], object], seconds: float, at_most: int) -> float:
    """Mean seconds per call of `fn`, over about `seconds` (at most `at_most` calls)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < at_most and time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="ppocr_det")
    ap.add_argument("--image", default="page.png", help="scikit-image sample, as a 640x480 JPEG")
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = ap.parse_args()
    interval = sys.getswitchinterval()
    print(f"Python {sys.version.split()[0]}, switch interval {interval * 1e3:g} ms")

    def take_back() -> None:
        hashlib.sha256(_BLOCK).digest()

    alone = per_call(take_back, args.seconds, 100_000)
    print(f"  GIL let go and taken back: {alone * 1e6:.0f} us alone")
    for label, kind, burst in (
        ("Python without a pause", "python", 100.0),
        ("20 us of Python between system calls", "io", 20.0),
        ("100 us of Python between system calls", "io", 100.0),
    ):
        with Beside(kind, burst):
            took = per_call(take_back, args.seconds, 200)
        print(f"  beside {label}: {took * 1e3:.2f} ms")

    spec = ModelSpec.load(args.models / args.model)
    model = engine.load(
        args.models, spec, args.models / args.model / "1", workers=1, preference=("cpu",)
    )
    task, fit = model.task, model.task.decode_hint()
    data = frame_jpeg((640, 480), sample_image(args.image))
    image = decode(data, fit, 1 << 30)
    tensor, ctx = task.preprocess(image)
    outputs = [o[0] for o in model.run(tensor[None], 0)]
    stages: dict[str, Callable[[], object]] = {
        "decode": lambda: decode(data, fit, 1 << 30),
        "preprocess": lambda: task.preprocess(image),
        "postprocess": lambda: task.postprocess(outputs, ctx, image, spec.threshold),
    }
    print(f"{model.ref}, {args.image} as a 640x480 JPEG, one frame:")
    for name, fn in stages.items():
        solo = per_call(fn, args.seconds, 10_000)
        with Beside("python"):
            crowded = per_call(fn, args.seconds, 50)
        print(
            f"  {name:12s} {solo * 1e3:6.2f} ms alone, {crowded * 1e3:7.1f} ms beside Python "
            f"without a pause: {(crowded - solo) / interval:.0f} switch intervals of waiting"
        )


if __name__ == "__main__":
    main()
