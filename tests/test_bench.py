"""`edge bench`: the report's code run end to end in quick mode, and its refusals.

The quick run measures nothing worth reading (runs of about a second on a shared machine), so
these tests check the report's shape, its charts and its exit codes, never a figure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from edge.bench.report import COLUMNS, GENERATED_END
from edge.bench.stats import binned_median, drift, jain, percentile
from edge.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: a safety net for a run of subprocesses on a slow, busy machine, not a claim about speed
RUN_WITHIN_S = 600


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", "bench", *args],
        capture_output=True,
        text=True,
        timeout=RUN_WITHIN_S,
    )


def table(report: str, first_column: str) -> list[list[str]]:
    """The rows (header first) of the Markdown table whose header starts with that column."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.integration
@pytest.mark.timeout(RUN_WITHIN_S + 60)
def test_quick_run_writes_the_report_with_its_tables_and_charts(
    pulled: Path, tmp_path: Path
) -> None:
    """Guards against a report that lost a section, a table column or a chart, a chart file
    that is not a PNG, a report that drops the notes kept below its generated part, and a
    bench that cannot drive one of its transports or servers."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "benchmarks.md").write_text(f"stale figures\n{GENERATED_END}\n\nnotes kept by hand\n")
    done = bench(
        "--quick", "--force", "--models", "blazeface",
        "--transports", "websocket,websocket-credits,webrtc,grpc",
        "--repository", str(pulled), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[edge bench" in done.stderr  # progress goes to stderr
    report = (out / "benchmarks.md").read_text()

    headings = re.findall(r"(?m)^#+ .*$", report)
    assert headings == [
        "# Benchmarks",
        "## Machine and command",
        "## blazeface",
        "### Comparison",
        "### CPU per result against the plain loop",
        "### Throughput against offered load",
        "### Fairness",
        "### Frame age over a long overload",
        "### Inside the gateway",
        "### The ceiling, measured",
    ], headings
    assert "Quick mode" in report
    assert "stale figures" not in report
    assert report.rstrip().endswith("notes kept by hand")

    about = {row[0]: row[1] for row in table(report, "what")[1:]}
    for key in ("command", "cpu", "cores", "python", "onnxruntime", "numpy", "edge-gateway"):
        assert about.get(key), f"the header has no {key}: {about}"
    assert about["command"].startswith("`edge bench --quick")

    comparison = table(report, "configuration")
    assert tuple(comparison[0]) == COLUMNS
    assert all(len(row) == len(COLUMNS) for row in comparison)
    names = [row[0] for row in comparison[1:]]
    expected_rows = (
        "the ceiling",
        "plain loop",
        "raw sessions",
        "gateway over websocket",
        "gateway over webrtc",
        "gateway over grpc",
        "naive in-order server",
    )
    for expected in expected_rows:
        assert any(name.startswith(expected) for name in names), (expected, names)
    load = table(report, "transport")
    assert {row[0] for row in load[1:]} == {"websocket", "websocket-credits", "webrtc", "grpc"}
    # each client's CPU per result against the plain loop: with credits, none sent in vain
    overhead = {row[0]: row for row in table(report, "transport, client")[1:]}
    assert set(overhead) == {
        "plain loop (the ceiling)",
        "websocket, a client without credits",
        "websocket, a client that follows credits",
        "webrtc",
        "grpc",
    }
    assert all(row[2].endswith("x") for row in overhead.values())
    assert table(report, "server")[1][0] == "gateway"
    assert table(report, "server")[2][0] == "naive in-order server"

    charts = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert len(charts) == 3, charts
    for name in charts:
        path = out / name
        assert path.read_bytes().startswith(PNG_SIGNATURE), name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100, (name, image.size)
    figures = json.loads((out / "benchmarks" / "results.json").read_text())
    assert [m["model"] for m in figures["models"]] == ["blazeface"]


@pytest.mark.integration
@pytest.mark.timeout(RUN_WITHIN_S + 60)
def test_a_machine_whose_ceiling_moves_is_refused(pulled: Path, tmp_path: Path) -> None:
    """Guards against figures published from a machine too busy to measure: with no drift
    allowed, two measurements of the ceiling never agree, so the bench must refuse, say why
    and how to go on in one message, exit nonzero and write no report."""
    out = tmp_path / "report"
    done = bench(
        "--quick", "--max-drift", "0", "--models", "blazeface", "--transports", "websocket",
        "--repository", str(pulled), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    assert "too busy to measure" in done.stderr and "--force" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "benchmarks.md").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--transports", "carrier-pigeon"], "unknown transport"),
        (["--models", "no_such_model"], "no model 'no_such_model'"),
        (["--size", "big"], "--size"),
        (["--max-drift", "2"], "--max-drift"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(
    args: list[str], says: str, pulled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards against a traceback, or a long run started, for arguments that cannot work."""
    assert main(["bench", "--repository", str(pulled), *args]) == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("edge bench: ") and err.count("\n") == 1, err


@pytest.mark.unit
def test_summaries() -> None:
    """Guards against off-by-one percentiles and a fairness index that is not Jain's."""
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )
    assert jain([5, 5, 5, 5]) == 1.0
    assert jain([8, 0, 0, 0]) == 0.25
    assert drift([100.0, 90.0, 95.0]) == pytest.approx(0.1)
    assert binned_median([(0.1, 1.0), (0.2, 3.0), (1.5, 7.0)], 1.0) == [(0.5, 2.0), (1.5, 7.0)]


@pytest.mark.unit
def test_the_notes_kept_by_hand_in_docs_survive_a_rewrite() -> None:
    """Guards against `make bench` wiping what docs/benchmarks.md keeps by hand (what is not
    measured yet, the one-off measurements): they must sit below the marker the report keeps."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md").read_text()
    assert text.count(GENERATED_END) == 1
    kept = text.split(GENERATED_END, 1)[1]
    assert "## Not measured yet" in kept and "16 CPU cores" in kept
