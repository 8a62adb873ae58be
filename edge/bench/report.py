"""The report: `benchmarks.md` in the output folder, its charts and results.json beside it
in `benchmarks/`. When the file exists, what follows GENERATED_END in it (notes kept by hand)
is kept."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from edge.bench import overhead
from edge.bench.baselines import Baseline
from edge.bench.charts import draw
from edge.bench.load import Run
from edge.bench.results import BenchResults, Measured, ModelResults
from edge.bench.stats import jain, percentile

REPORT, FOLDER = "benchmarks.md", "benchmarks"
GENERATED_END = (
    "<!-- end of the report edge bench writes; what follows is kept when it rewrites this file -->"
)
#: the comparison table's columns (tests/test_bench.py checks them)
COLUMNS = (
    "configuration",
    "throughput (results/s)",
    "p50 latency (ms)",
    "p95 latency (ms)",
    "p99 latency (ms)",
    "CPU use (cores)",
    "CPU per result (ms)",
    "ratio to the ceiling",
)
LOAD_COLUMNS = (
    "transport", "offered (x ceiling)", "offered (frames/s)", "sent (frames/s)",
    "throughput (results/s)", "ratio to the ceiling", "dropped as stale", "unanswered",
    "answered twice", "p50 / p99 latency (ms)",
)  # fmt: skip
FAIRNESS_COLUMNS = (
    "transport", "run", "streams", "results per stream (min - max)", "Jain's index",
)  # fmt: skip
#: a model with later stages: its headline runs against the ceiling of all its stages
STAGE_COLUMNS = (
    "run", "throughput (results/s)", "p50 frame age (ms)", "p99 frame age (ms)",
    "ratio to the ceiling", "target",
)  # fmt: skip
#: the share of the ceiling a model with stages should reach at the headline overload (#24)
STAGE_TARGET = 0.90
AGE_COLUMNS = (
    "server", "throughput (results/s)", "p50 latency (ms)", "p99 latency (ms)", "max (ms)",
    "median age, first third -> last third (ms)", "unanswered",
)  # fmt: skip


def write(results: BenchResults, out: Path) -> Path:
    """Write the report, its charts and results.json under `out`; the report's path."""
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(dataclasses.asdict(results), indent=1))
    charts = draw(results, folder)
    path = out / REPORT
    kept = ""
    if path.exists() and GENERATED_END in (old := path.read_text()):
        kept = old.split(GENERATED_END, 1)[1].lstrip("\n")
    rel = {m: {k: f"{FOLDER}/{p.name}" for k, p in c.items()} for m, c in charts.items()}
    path.write_text(render(results, rel) + "\n" + GENERATED_END + "\n\n" + kept)
    return path


def render(results: BenchResults, charts: dict[str, dict[str, str]]) -> str:
    parts = [_header(results)]
    for m in results.models:
        parts.append(_model(m, charts.get(m.model, {})))
    return "\n".join(parts)


def _header(r: BenchResults) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `edge bench` (edge/bench/, `make bench`). Every figure comes from one run "
        "on one machine: the gateway against the ceiling measured there and then (one plain "
        "loop of the same stages per core, each its own process, no network), so a ratio "
        "compares like with like. Latency is the age of the frame behind a result, as the "
        "client measures it (frame sent to result received). The design these figures inform "
        "is docs/architecture.md; the GPU record is docs/gpu.md.",
        "",
    ]
    if r.quick:
        lines += ["**Quick mode** (`--quick`): runs of about a second that exercise the report; "
                  "the figures mean nothing.", ""]  # fmt: skip
    for what in r.forced:
        lines += [f"**Measured with `--force`** although {what}.", ""]
    for what in r.warnings:
        lines += [f"**Not reliable**: {what}.", ""]
    lines += ["## Machine and command", "", "| what | value |", "|---|---|"]
    lines.append(f"| command | `{r.command}` |")
    lines.append(f"| date | {r.started} |")
    lines += [f"| {k} | {v} |" for k, v in r.machine.items()]
    lines += [f"| {k} | {v} |" for k, v in r.versions.items()]
    lines += [f"| {k} | {v} |" for k, v in r.plan.items()]
    return "\n".join(lines) + "\n"


def _model(m: ModelResults, charts: dict[str, str]) -> str:
    out = [
        f"## {m.model}",
        "",
        f"Every client sent the same frame: a {m.frame}. The ceiling: {m.ceiling():.1f} "
        f"frames/s (the median of {len(m.ceilings)} measurements before the runs).",
        "",
        *_stages(m),
        "### Comparison",
        "",
        _table(COLUMNS, _comparison(m)),
        "",
        *overhead.section(m),
        "### Throughput against offered load",
        "",
    ]
    out += _figure(charts, "load", "results a second against frames offered a second",
                   LOAD_COLUMNS, [_load_row(r, m.ceiling()) for r in m.find("load")])  # fmt: skip
    out += [
        "Sent can fall short of offered when the clients cannot keep up (they skip a frame "
        "rather than send it late). Over WebRTC the last frame a stream sends may never be "
        "decoded (docs/webrtc.md), so up to one frame a stream stays unanswered.",
        "",
        "### Fairness",
        "",
    ]
    fair = [r for r in m.runs if r.scenario in ("fairness", "load") and r.run.per_stream]
    out += _figure(charts, "fairness", "results per stream", FAIRNESS_COLUMNS,
                   [_fair_row(r) for r in fair])  # fmt: skip
    out += [
        "### Frame age over a long overload",
        "",
        "The same streams at the same overload against the gateway and against a naive "
        "server (edge/bench/naive.py) that answers every frame in order with the same model: "
        "its frames wait in the socket buffers and age; the gateway answers the newest.",
        "",
    ]
    ages = m.find("age", "gateway") + m.find("age", "naive")
    out += _figure(charts, "age", "frame age over time, gateway and naive server", AGE_COLUMNS,
                   [_age_row(r) for r in ages])  # fmt: skip
    if m.batches:
        b = m.batches
        out += [
            "### Inside the gateway",
            "",
            f"From its /metrics after the runs: mean batch size {b['mean']:.2f} "
            f"({b['over_one']:.0%} of batches larger than one), batch limit {b['limit']:.0f}; "
            f"mean stage times: decode {b['decode_ms']:.2f} ms, preprocess "
            f"{b['preprocess_ms']:.2f}, postprocess {b['postprocess_ms']:.2f} a frame, the "
            f"session call {b['session_ms']:.2f} and the model run around it "
            f"{b['run_ms']:.2f} a batch.",
            "",
        ]
    out += ["### The ceiling, measured", ""]
    rows = [["before the runs", *_base_cells(b)] for b in m.ceilings]
    if m.ceiling_after:
        rows.append(["after the runs", *_base_cells(m.ceiling_after)])
    out += [_table(("when", "frames/s", "CPU use (cores)", "how"), rows), ""]
    if m.notes:
        out += ["Raw sessions, each layout and batch size:", ""]
        out += [f"- {n}" for n in m.notes] + [""]
    return "\n".join(out)


def _stages(m: ModelResults) -> list[str]:
    """For a model with later stages: what the ceiling runs, and its headline runs (every
    transport's 1.5x load, the long overload on both servers) against it and the target."""
    if len(m.stages) < 2:
        return []
    ceiling = m.ceiling()
    runs = [r for r in m.find("load") if r.factor == 1.5] + m.find("age") + m.find("age", "naive")
    rows = []
    for r in runs:
        ages, got = _ages_ms(r.run), r.run.throughput()
        met = "met" if ceiling and got / ceiling >= STAGE_TARGET else "not met"
        rows.append([_label(r), _f(got, 1), _f(percentile(ages, 0.5), 1),
                     _f(percentile(ages, 0.99), 1), _ratio(got, ceiling),
                     f"{STAGE_TARGET:.2f}x: {met}"])  # fmt: skip
    return [
        "### Stages against the ceiling",
        "",
        f"Stages: {' → '.join(m.stages)}. The ceiling and the plain loop run every stage of "
        "each frame, one frame at a time, one process per core (edge/bench/stagerun.py), as "
        "does the naive server; the raw sessions row is the first stage alone.",
        "",
        _table(STAGE_COLUMNS, rows),
        "",
    ]


def _comparison(m: ModelResults) -> list[list[str]]:
    ceiling = m.ceiling()
    cores = statistics.median(b.cpu_cores for b in m.ceilings)
    first = m.ceilings[0]
    name = f"the ceiling: {first.name}, a plain loop each (median of {len(m.ceilings)})"
    rows = [[name, _f(ceiling, 1), "—", "—", "—", _f(cores, 2), _f(1e3 * cores / ceiling, 2),
             "1.00x"]]  # fmt: skip
    for b in (m.loop, m.raw):
        if b is not None:
            rows.append([f"{b.name}: {b.detail}", _f(b.fps, 1), "—", "—", "—", _f(b.cpu_cores, 2),
                         _f(1e3 * b.cpu_cores / b.fps if b.fps else None, 2),
                         _ratio(b.fps, ceiling)])  # fmt: skip
    for r in m.runs:
        if r.scenario == "unloaded" or (r.scenario == "load" and r.factor == 1.5):
            rows.append(_row(r, ceiling, _label(r)))
    for r in m.find("age", "gateway") + m.find("age", "naive"):
        rows.append(_row(r, ceiling, _label(r)))
    return rows


def _label(r: Measured) -> str:
    server = "gateway" if r.server == "gateway" else "naive in-order server"
    if r.scenario == "unloaded":
        return f"{server} over {r.transport}, unloaded: 1 stream at {r.run.offered_fps:.0f} fps"
    return (
        f"{server} over {r.transport}, {r.factor:g}x overload: {r.run.streams} streams, "
        f"{r.run.seconds:g} s"
    )


def _row(r: Measured, ceiling: float, label: str) -> list[str]:
    ages = _ages_ms(r.run)
    got = r.run.throughput()
    return [label, _f(got, 1), _f(percentile(ages, 0.5), 1), _f(percentile(ages, 0.95), 1),
            _f(percentile(ages, 0.99), 1), _f(r.cpu_cores(), 2), _f(r.cpu_ms_per_result(), 2),
            _ratio(got, ceiling)]  # fmt: skip


def _load_row(r: Measured, ceiling: float) -> list[str]:
    run, ages = r.run, _ages_ms(r.run)
    return [r.transport, f"{r.factor:g}x", _f(run.offered_fps, 0), _f(run.sent_fps(), 0),
            _f(run.throughput(), 1), _ratio(run.throughput(), ceiling), str(run.dropped),
            str(run.unanswered), str(run.twice),
            f"{_f(percentile(ages, 0.5), 1)} / {_f(percentile(ages, 0.99), 1)}"]  # fmt: skip


def _fair_row(r: Measured) -> list[str]:
    shares = r.run.per_stream
    run = "fairness" if r.scenario == "fairness" else f"load {r.factor:g}x"
    return [r.transport, run, str(len(shares)), f"{min(shares)} - {max(shares)}",
            _f(jain(shares), 3)]  # fmt: skip


def _age_row(r: Measured) -> list[str]:
    ages, third = r.run.ages, r.run.seconds / 3
    first = [a * 1e3 for t, a in ages if t < third]
    last = [a * 1e3 for t, a in ages if 2 * third < t <= r.run.seconds]
    ms = _ages_ms(r.run)
    drift = f"{_median(first)} -> {_median(last)}"
    server = "gateway" if r.server == "gateway" else "naive in-order server"
    return [server, _f(r.run.throughput(), 1), _f(percentile(ms, 0.5), 1),
            _f(percentile(ms, 0.99), 1), _f(max(ms, default=None), 1), drift,
            str(r.run.unanswered)]  # fmt: skip


def _base_cells(b: Baseline) -> list[str]:
    return [_f(b.fps, 1), _f(b.cpu_cores, 2), b.detail]


def _ages_ms(run: Run) -> list[float]:
    return [a * 1e3 for _, a in run.ages]


def _median(values: list[float]) -> str:
    return _f(statistics.median(values), 1) if values else "—"


def _chart(charts: dict[str, str], kind: str, alt: str) -> list[str]:
    return [f"![{alt}]({charts[kind]})", ""] if kind in charts else []


def _figure(
    charts: dict[str, str], kind: str, alt: str, head: tuple[str, ...], rows: list[list[str]]
) -> list[str]:
    """The chart of `kind` (when drawn), then its figures as a table."""
    return [*_chart(charts, kind, alt), _table(head, rows), ""]


def _table(head: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _f(x: float | None, digits: int) -> str:
    if x is None or math.isnan(x):
        return "—"
    return f"{x:,.{digits}f}"


def _ratio(x: float, ceiling: float) -> str:
    return f"{x / ceiling:.2f}x" if ceiling else "—"
