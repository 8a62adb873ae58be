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


ROOT = DOCS.parent
EDGE = ROOT / "edge"
#: the pages whose links and module paths are checked
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (shell comments there are not headings)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation gone, spaces as -."""
    out: set[str] = set()
    for title in re.findall(r"^#{1,6} +(.+?) *$", _prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = 0
        while (f"{slug}-{n}" if n else slug) in out:
            n += 1
        out.add(f"{slug}-{n}" if n else slug)
    return out


def test_links_resolve() -> None:
    """A relative link in the docs names a file that exists and, with #, one of its headings:
    moving a record from one page to another must not leave its readers a dead link."""
    dead = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            file = (page.parent / name).resolve() if name else page
            if not file.exists():
                dead.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                dead.append(f"{page.name}: {target} (no such heading)")
    assert dead == []


def test_module_paths_exist() -> None:
    """Every edge/... module a page names exists: the layout moved, the docs follow."""
    missing = set()
    for page in PAGES:
        for p in re.findall(r"\bedge/[\w/]+\.py", _prose(page)):
            if not (ROOT / p).exists():
                missing.add(f"{page.name}: {p}")
    assert sorted(missing) == []


def test_architecture_names_every_module() -> None:
    """docs/architecture.md's layout table covers every module and package under edge/."""
    text = (DOCS / "architecture.md").read_text()
    missing = []
    for path in sorted(EDGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if "/gen/" in rel:
            rel = rel[: rel.index("/gen/") + len("/gen/")]
        elif path.name == "__init__.py":
            rel = path.parent.relative_to(ROOT).as_posix() + "/"
        if f"`{rel}`" not in text:
            missing.append(rel)
    assert missing == []
