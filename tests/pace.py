"""How fast this machine is, measured here, and waits sized from it.

A bound in a test is a safety net, not a claim about speed: a machine five times slower, or
one whose cores are all busy with other work, must still pass. So no test waits a fixed
number of seconds for something to happen. It waits for a condition (`wait_until`), with a
deadline sized from the work still outstanding (`deadline`): frames in flight times the cost
of one frame measured on this machine (`frame_cost`), plus a margin. When the deadline passes,
the failure says what was still missing.

`frame_cost(model)` is measured once per test process, the first time a test asks for it:
the median time of one frame through the same stages a worker runs (decode, preprocess, the
ONNX Runtime session on one thread, postprocess), here and now; `start_cost()` likewise for
starting a client process. Checks that something is fast
enough measure their own reference in the same test instead (see test_overload.py).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge.inference.decode import decode
from tests.conftest import jpeg
from tests.models_fixture import loaded

#: the fixed part of every deadline (connecting, a hello, a process starting, a scheduling
#: hiccup of the host): at least MARGIN_S, and longer on a machine where MARGIN_FRAMES
#: BlazeFace frames take longer than that (about 5 s on the 2-core box)
MARGIN_S = 5.0
MARGIN_FRAMES = 2000
#: a frame of outstanding work is given this many times the cost measured for it: the
#: gateway adds its own work per frame (sockets, JSON, the event loop), clients share the
#: machine, and the machine may be busier than when the cost was measured
SLACK = 10.0
#: what each model is measured on: a frame like the ones the tests send it
SAMPLES = {"blazeface": ("astronaut.png", None), "ppocr_det": ("page.png", (640, 480))}


@functools.cache
def frame_cost(model: str = "blazeface") -> float:
    """Median seconds one frame of `model` takes through decode, preprocess, a single-threaded
    session run and postprocess, measured on this machine at the first call."""
    return measure_frame_cost(model)


def measure_frame_cost(model: str = "blazeface") -> float:
    """`frame_cost`, measured now (for a test that compares against it)."""
    name, size = SAMPLES[model]
    data = jpeg(name, size)
    task, session = loaded(model)
    feed = session.get_inputs()[0].name

    def one() -> float:
        t0 = time.perf_counter()
        image = decode(data, task.decode_hint(), 1 << 30)
        tensor, ctx = task.preprocess(image)
        outputs = session.run(None, {feed: tensor[None]})
        task.postprocess([o[0] for o in outputs], ctx, image, task.spec.threshold)
        return time.perf_counter() - t0

    one()  # the first run allocates
    times = [one()]
    while len(times) < 5 or (sum(times) < 0.2 and len(times) < 50):
        times.append(one())
    return statistics.median(times)


@functools.cache
def start_cost() -> float:
    """Seconds a Python process takes here to start and import what `edge stream` runs on
    (the client, PyAV), measured on this machine at the first call: for a wait that includes
    starting such a process."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import edge.client.run, edge.client.sources, av"], check=True
    )
    return time.perf_counter() - t0


def margin() -> float:
    """The part of every deadline that does not depend on the work outstanding, in seconds."""
    return max(MARGIN_S, MARGIN_FRAMES * frame_cost("blazeface"))


def deadline(frames: float = 1, streams: int = 1, model: str = "blazeface") -> float:
    """Seconds to allow for `frames` frames per stream of `model` on `streams` streams to be
    served, however slow or busy this machine: the margin plus SLACK x the work measured."""
    return margin() + SLACK * frames * streams * frame_cost(model)


def outpacing_fps(
    streams: int, model: str = "blazeface", workers: int | None = None, factor: float = 3.0
) -> float:
    """Frames a second per stream for `streams` streams to offer `factor` times what `workers`
    (default: one per core, the gateway's default) can run of `model` on this machine: for a
    test whose premise is that clients outpace the model, however fast the machine."""
    workers = workers or os.cpu_count() or 1
    return factor * workers / (streams * frame_cost(model))


Condition = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def wait_until(cond: Condition, within: float, what: str | Callable[[], Any]) -> None:
    """Wait until `cond()` (a plain or an async function) is true. After `within` seconds fail
    with `what` (a text, or a function called then, to say what is still missing)."""
    end = time.monotonic() + within
    pause = 0.001  # look again soon, then less and less often
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > end:
            missing = what() if callable(what) else what
            raise AssertionError(f"still missing after {within:.1f} s: {missing}")
        await asyncio.sleep(pause)
        pause = min(2 * pause, 0.05)


def poll(cond: Callable[[], bool], within: float, what: str | Callable[[], Any]) -> None:
    """`wait_until` for a test that runs on a plain thread."""
    end = time.monotonic() + within
    pause = 0.001
    while not cond():
        if time.monotonic() > end:
            missing = what() if callable(what) else what
            raise AssertionError(f"still missing after {within:.1f} s: {missing}")
        time.sleep(pause)
        pause = min(2 * pause, 0.05)
