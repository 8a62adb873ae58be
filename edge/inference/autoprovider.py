"""`providers = auto`: time a model on every execution provider that can start here, during
warm-up, and keep the one that serves the most frames a second on this machine.

What is compared is throughput, not one call's latency: the CPU provider runs one
single-threaded session per core side by side, so its figure is the cores divided by one
frame's time; a GPU provider runs its sessions at the model's `max_batch`, so its figure is
that batch divided by one batch's time. (A 16-core box with an H200 served BlazeFace twice as
fast on the cores as on CUDA, while a text detector was many times faster on CUDA.)
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from edge.inference import providers

log = logging.getLogger("edge.providers")

#: timed runs per provider, after one untimed run (a GPU picks its kernels on the first)
RUNS = 12

#: builds a session for (provider, threads) and returns a function that runs one batch
SessionFactory = Callable[[str, int], Callable[[np.ndarray], object]]


def choose(
    tensor: np.ndarray, max_batch: int, make: SessionFactory, cores: int | None = None
) -> tuple[tuple[str, ...], str]:
    """The preference to load with, and a sentence with the figures that decided it."""
    candidates = providers.auto_candidates()
    if candidates == ["cpu"]:
        return ("cpu",), "auto: the CPU provider is the only one that can start here"
    cores = cores or os.cpu_count() or 1
    rates: dict[str, float] = {}
    for short in candidates:
        batch = 1 if short in ("cpu", "xnnpack") else max_batch
        try:
            run = make(short, 1)
            per_batch = _time(run, np.stack([tensor] * batch))
        except Exception as e:  # a provider that lists itself but cannot run this model
            log.warning("auto: %s cannot run this model: %s", short, e)
            continue
        rates[short] = (cores if batch == 1 else 1) * batch / per_batch
    best = providers.pick_fastest(rates)
    figures = ", ".join(f"{s} {r:,.0f}" for s, r in rates.items())
    why = f"auto: frames/s on this machine estimated {figures}; chose {best}"
    return ((best, "cpu") if best != "cpu" else ("cpu",)), why


def _time(run: Callable[[np.ndarray], object], batch: np.ndarray) -> float:
    run(batch)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
