"""The report's charts, as PNGs drawn with matplotlib (no pyplot, no display: a Figure
saved through the Agg canvas). One file per chart and model."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from edge.bench.results import BenchResults, Measured, ModelResults
from edge.bench.stats import binned_median

GATEWAY, NAIVE = "#1f77b4", "#d62728"


def draw(results: BenchResults, folder: Path) -> dict[str, dict[str, Path]]:
    """Every chart of every model into `folder`: model -> {"age", "load", "fairness"} -> file."""
    out: dict[str, dict[str, Path]] = {}
    for m in results.models:
        files = {
            "age": _age(m, folder / f"{m.model}-age.png"),
            "load": _load(m, folder / f"{m.model}-load.png"),
            "fairness": _fairness(m, folder / f"{m.model}-fairness.png"),
        }
        out[m.model] = {k: v for k, v in files.items() if v is not None}
    return out


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path


def _age(m: ModelResults, path: Path) -> Path | None:
    """Frame age at each result over the long overload: the gateway against the naive server."""
    runs = m.find("age", "gateway") + m.find("age", "naive")
    if not runs:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for run in runs:
        colour = GATEWAY if run.server == "gateway" else NAIVE
        label = "gateway (latest frame wins)" if run.server == "gateway" else "naive, in order"
        points = [(t, a * 1e3) for t, a in run.run.ages]
        if not points:
            continue
        ax.scatter([t for t, _ in points], [a for _, a in points], s=2, alpha=0.15,
                   color=colour, linewidths=0)  # fmt: skip
        line = binned_median(points, max(run.run.seconds / 60, 0.05))
        ax.plot([t for t, _ in line], [a for _, a in line], color=colour, label=f"{label}, median")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the run began")
    ax.set_ylabel("frame age at its result (ms)")
    ax.set_title(f"{m.model}: frame age under {runs[0].factor:g}x overload")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def _load(m: ModelResults, path: Path) -> Path | None:
    """Results a second against the frames a second offered, per transport."""
    runs = m.find("load")
    if not runs:
        return None
    ceiling = m.ceiling()
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    top = max(r.run.offered_fps for r in runs)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="every frame served")
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label="the ceiling")
    for transport in dict.fromkeys(r.transport for r in runs):
        mine = sorted((r for r in runs if r.transport == transport), key=_offered)
        ax.plot(
            [_offered(r) for r in mine],
            [r.run.throughput() for r in mine],
            marker="o",
            label=f"gateway over {transport}",
        )
    ax.set_xlabel("frames offered a second (all streams)")
    ax.set_ylabel("results a second")
    ax.set_title(f"{m.model}: results against offered load")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _offered(r: Measured) -> float:
    return r.run.offered_fps


def _fairness(m: ModelResults, path: Path) -> Path | None:
    """Results each stream got in the fairness run, per transport, against the even share."""
    runs = [r for r in m.find("fairness") if r.run.per_stream]
    if not runs:
        return None
    fig = Figure(figsize=(8, 2.2 + 1.8 * len(runs)))
    axes = fig.subplots(len(runs), 1, squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        shares = run.run.per_stream
        ax.bar(range(len(shares)), shares, color=GATEWAY)
        ax.axhline(sum(shares) / len(shares), color="black", linestyle="--", linewidth=1,
                   label="an even share")  # fmt: skip
        ax.set_ylabel("results")
        ax.set_title(f"{m.model} over {run.transport}: {len(shares)} streams")
        ax.legend(loc="lower right")
    axes[-1, 0].set_xlabel("stream")
    return _save(fig, path)
