"""`edge bench` on a model with later stages (`ocr`): its ceiling and plain loop run every
stage, and the report sets its headline runs against that ceiling and the target (#24). As
in tests/test_bench.py, a quick run's figures mean nothing: the report's shape is checked,
never a figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edge.bench.baselines import Stages, ort_providers
from edge.bench.frames import PAGE_LINES, frame_jpeg
from edge.bench.report import STAGE_COLUMNS
from tests.test_bench import RUN_WITHIN_S, bench, table

OCR_STAGES = "db_text (model.onnx) → text_angle (cls.onnx) → ctc_text (rec.onnx)"


@pytest.mark.integration
def test_the_plain_loop_reads_the_drawn_page(pulled: Path) -> None:
    """Guards against a ceiling that runs only the detector of a model with later stages (a
    ratio against it would flatter the gateway): the bench's plain loop must read the lines
    of the page it sends."""
    stages = Stages(pulled, "ocr", ort_providers("cpu"), threads=1)
    payload = stages.run(frame_jpeg((640, 480), reads_text=True))
    read = sorted(d["text"] for d in payload["detections"])
    assert read == sorted(text for text, _ in PAGE_LINES), read


@pytest.mark.integration
@pytest.mark.timeout(RUN_WITHIN_S + 60)
def test_quick_run_reports_the_stages_against_the_ceiling(pulled: Path, tmp_path: Path) -> None:
    """Guards against the OCR model's report leaving out its stages, its headline runs (the
    1.5x load, the long overload on the gateway and the naive server) or their ratio to the
    ceiling and the target."""
    out = tmp_path / "report"
    done = bench(
        "--quick", "--force", "--models", "ocr", "--transports", "websocket",
        "--repository", str(pulled), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "benchmarks.md").read_text()
    headings = re.findall(r"(?m)^#+ .*$", report)
    assert headings[headings.index("## ocr") + 1] == "### Stages against the ceiling", headings
    assert f"Stages: {OCR_STAGES}." in report
    rows = table(report, "run")
    assert tuple(rows[0]) == STAGE_COLUMNS
    names = [row[0] for row in rows[1:]]
    assert [n.split(",")[0] for n in names] == [
        "gateway over websocket", "gateway over websocket", "naive in-order server over websocket"
    ], names  # fmt: skip
    assert all("1.5x overload" in n for n in names), names
    for row in rows[1:]:
        assert re.fullmatch(r"\d+\.\d\dx", row[4]), row  # the ratio to the ceiling
        assert re.fullmatch(r"0\.90x: (met|not met)", row[5]), row
    comparison = [row[0] for row in table(report, "configuration")[1:]]
    assert any(n.startswith("plain loop") for n in comparison), comparison
    figures = json.loads((out / "benchmarks" / "results.json").read_text())
    assert figures["models"][0]["stages"] == OCR_STAGES.split(" → ")
