"""A/B of what the gateway adds per frame: gateways from several source trees (or the same tree
with other settings) side by side, driven in turn, interleaved, by `edge bench`'s clients at
the same overload, each run's CPU per result against the plain loop measured just before it
(docs/benchmarks.md, "Per-frame cost, before and after").

Each variant is LABEL=TREE[:MORE_PATHS][,EDGE_SETTING=VALUE...]: `edge serve` is started with
PYTHONPATH=TREE[:MORE_PATHS] and those settings. The trees come from `git archive`:

    git archive a772850 edge | tar -x -C /tmp/before
    git archive HEAD edge | tar -x -C /tmp/after
    python bench/overhead_ab.py --variant before=/tmp/before \\
        --variant after=/tmp/after,EDGE_UVLOOP=1 --reps 5 --seconds 10

Prints each run (CPU per result, ratio to the plain loop of its repetition, results/s, the
clients' books) and a summary: median and range over the repetitions. Order alternates
between repetitions so neither variant always runs first.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path

from edge.bench import scenarios
from edge.bench.baselines import CeilingPool, ort_providers
from edge.bench.frames import frame_jpeg
from edge.bench.servers import Server, gateway, scratch_repository

ROOT = Path(__file__).resolve().parent.parent
Row = tuple[float, float, float]  # CPU ms per result, ratio to the plain loop, results/s


def variants(specs: list[str]) -> list[tuple[str, dict[str, str]]]:
    out = []
    for spec in specs:
        label, rest = spec.split("=", 1)
        tree, *settings = rest.split(",")
        out.append((label, {"PYTHONPATH": tree, **dict(s.split("=", 1) for s in settings)}))
    return out


def one_run(server: Server, transport: str, a: argparse.Namespace, data: bytes,
            ceiling: float) -> tuple[float, scenarios.Measured]:  # fmt: skip
    fps = (a.offered or a.factor * ceiling) / a.streams
    m = scenarios.measure(server, transport, a.model, data, a.streams, fps, a.seconds,
                          scenarios.QUICK, "load", "gateway", a.factor)  # fmt: skip
    return m.cpu_ms_per_result() or float("nan"), m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="LABEL=TREE[,K=V...]")
    p.add_argument("--transports", default="websocket,websocket-credits,grpc")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--factor", type=float, default=1.5, help="offered: this x the ceiling")
    p.add_argument(
        "--offered",
        type=float,
        help="frames/s offered in all (instead of --factor; "
        "on a machine others share, the ceiling moves too much to offer a multiple)",
    )
    p.add_argument("--model", default="blazeface")
    p.add_argument("--image", type=Path, default=ROOT / ".cache/testdata/astronaut.png")
    a = p.parse_args()
    data = frame_jpeg((640, 480), a.image)
    scratch = scratch_repository(ROOT / "models", [a.model])
    rows: dict[tuple[str, str], list[Row]] = {}
    plain: list[float] = []
    chosen = variants(a.variant)
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(gateway(scratch, "cpu", ("--processes", "auto"),
                                                      env)) for label, env in chosen}  # fmt: skip
        with CeilingPool(scratch, a.model, data, ort_providers("cpu")) as pool:
            pool.measure(2)  # warm
            for rep in range(a.reps):
                b = pool.measure(4)
                per = 1e3 * b.cpu_cores / b.fps
                plain.append(per)
                print(f"rep {rep}: ceiling {b.fps:.0f} fps, plain {per:.3f} ms/frame", flush=True)
                order = chosen if rep % 2 == 0 else chosen[::-1]
                for t in a.transports.split(","):
                    for label, _ in order:
                        cpr, m = one_run(servers[label], t, a, data, b.fps)
                        r = m.run
                        rows.setdefault((t, label), []).append((cpr, cpr / per, r.throughput()))
                        print(f"  {t:18s} {label:8s} {cpr:.3f} ms/result {cpr / per:.3f}x "
                              f"{r.throughput():.0f}/s sent {r.sent} skipped {r.skipped} "
                              f"dropped {r.dropped} errors {r.errors} unanswered {r.unanswered} "
                              f"twice {r.twice}", flush=True)  # fmt: skip
    print("\nsummary: median [min-max] over the repetitions")
    print(f"plain loop {statistics.median(plain):.3f} ms [{min(plain):.3f}-{max(plain):.3f}]")
    for (t, label), v in rows.items():
        ratios, cpr, got = [x[1] for x in v], [x[0] for x in v], [x[2] for x in v]
        print(f"{t:18s} {label:8s} {statistics.median(cpr):.3f} ms  ratio "
              f"{statistics.median(ratios):.3f}x [{min(ratios):.3f}-{max(ratios):.3f}]  "
              f"{statistics.median(got):.0f} results/s")  # fmt: skip
    first = chosen[0][0]
    print(f"\npaired, each repetition's CPU per result against {first}'s in the same repetition")
    for (t, label), v in rows.items():
        if label != first:
            paired = [x[0] / y[0] for x, y in zip(v, rows[(t, first)], strict=True)]
            print(f"{t:18s} {label:8s} {statistics.median(paired):.3f} "
                  f"[{min(paired):.3f}-{max(paired):.3f}]")  # fmt: skip


if __name__ == "__main__":
    main()
