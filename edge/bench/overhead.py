"""What the gateway adds to each frame: the CPU per result of each transport's headline
overload run against the plain loop's (the ceiling's, measured in the same bench run), for a
WebSocket client that knows nothing of credits (`websocket`: every frame it sends, the
gateway reads, and answers with a result or a drop notice) and one that follows them as
edge.client does (`websocket-credits`: no frame is sent that would be dropped)."""

from __future__ import annotations

import statistics

from edge.bench.results import ModelResults

COLUMNS = ("transport, client", "CPU per result (ms)", "vs the plain loop", "results/s",
           "frames sent per result")  # fmt: skip
CLIENTS = {
    "websocket": "websocket, a client without credits",
    "websocket-credits": "websocket, a client that follows credits",
}


def rows(m: ModelResults, headline: float = 1.5) -> list[list[str]]:
    """A row per transport's headline load run: its CPU per result against the ceiling's."""
    if not m.ceilings:
        return []
    cores = statistics.median(b.cpu_cores for b in m.ceilings)
    plain = 1e3 * cores / m.ceiling()
    out = [["plain loop (the ceiling)", f"{plain:.2f}", "1.00x", f"{m.ceiling():.1f}", "1.00"]]
    for r in m.runs:
        if r.scenario != "load" or r.factor != headline or r.server != "gateway":
            continue
        per = r.cpu_ms_per_result()
        got = r.run.throughput()
        results = got * r.run.seconds
        out.append([
            CLIENTS.get(r.transport, r.transport),
            "—" if per is None else f"{per:.2f}",
            "—" if per is None else f"{per / plain:.2f}x",
            f"{got:.1f}",
            f"{r.run.sent / results:.2f}" if results else "—",
        ])  # fmt: skip
    return out


def section(m: ModelResults) -> list[str]:
    """The report's lines for it (none when there is nothing to compare)."""
    table = rows(m)
    if len(table) < 2:
        return []
    head = "| " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return [
        "### CPU per result against the plain loop",
        "",
        "The gateway's CPU time (every process) per result in each transport's 1.5x overload "
        "run, over the plain loop's per frame: what the gateway adds to each frame.",
        "",
        *lines,
        "",
    ]
