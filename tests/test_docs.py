"""The public contracts in docs/ name what the code has: settings and metric names."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from edge.metrics import Metrics
from edge.settings import Settings

pytestmark = pytest.mark.unit
DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    """A setting added without docs is a contract nobody can find."""
    text = (DOCS / "settings.md").read_text()
    documented = set(re.findall(r"`(EDGE_[A-Z0-9_]+)`", text))
    expected = {"EDGE_" + f.name.upper() for f in fields(Settings)}
    assert expected - documented == set()
    assert documented - expected == set(), "docs name settings that do not exist"


def test_every_metric_is_documented() -> None:
    text = (DOCS / "metrics.md").read_text()
    names = set()
    for collector in Metrics().registry.collect():
        base = collector.name
        if collector.type == "counter":
            base += "_total"
        if collector.type == "info":
            base += "_info"
        names.add(base)
    documented = set(re.findall(r"`(edge_[a-z_]+)`", text))
    assert names - documented == set()
    assert documented - names == set()
