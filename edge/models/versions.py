"""What the repository knows of each model and its versions, how it finds them on disk, and
how /v1/models and /readyz show them (edge/models/repository.py keeps them and routes to them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.inference import providers
from edge.inference.engine import LoadedModel
from edge.inference.modelspec import ModelSpec, ModelSpecError
from edge.settings import Settings

#: what a scan finds per model: its spec (or why it has none), and each version's directory
#: with the signature (mtime, size) of its model.onnx
Found = dict[str, tuple[ModelSpec | None, str, list[tuple[Path, tuple[int, int]]]]]


@dataclass
class VersionState:
    name: str
    version: str
    state: str  # loading | ready | failed | retired | canary | promoted | rolled_back
    reason: str = ""
    signature: tuple[int, int] = (0, 0)
    model: LoadedModel | None = None
    #: its canary trial: the policy, the incumbent, then the decision and figures
    canary: dict[str, Any] | None = None


@dataclass
class ModelVersions:
    """One model: its spec, its versions' states, the one serving, a shadow (its canary, if
    any, is edge/models/canary/'s)."""

    name: str
    spec: ModelSpec | None
    versions: dict[str, VersionState] = field(default_factory=dict)
    active: LoadedModel | None = None
    shadow: LoadedModel | None = None
    error: str = ""
    retries_seen: int = 0  # the operator's retries (edge/models/canary/board.py) already applied


def version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (-1, v)


def scan(root: Path) -> Found:
    """Every model directory under `root`, and its version directories with a model.onnx
    (names starting with a dot are skipped: an update is written there, then renamed)."""
    out: Found = {}
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            spec: ModelSpec | None = ModelSpec.load(d)
            error = ""
        except ModelSpecError as e:
            spec, error = None, str(e)
        versions = []
        for v in sorted(d.iterdir()):
            f = v / "model.onnx"
            if v.is_dir() and not v.name.startswith(".") and (f.exists() or f.is_symlink()):
                try:
                    st = f.lstat()
                    versions.append((v, (st.st_mtime_ns, st.st_size)))
                except OSError:
                    continue
        if not versions and not error:
            error = f"no version with a model.onnx in {d}; run `edge models pull`"
        out[d.name] = (spec, error, versions)
    return out


def loading_reason(settings: Settings, spec: ModelSpec, vdir: Path) -> str:
    """Say so when this load will build a TensorRT engine: that can take minutes."""
    prefs = spec.providers or settings.providers
    if prefs == ("auto",):  # auto times TensorRT too when it can start
        prefs = tuple(providers.auto_candidates())
    if "tensorrt" not in prefs or "TensorrtExecutionProvider" not in providers.usable():
        return ""
    cache = settings.trt_cache
    model = vdir / "model.onnx"
    if cache is not None and model.is_file():
        if providers.engine_cached(providers.engine_cache_dir(cache, model)):
            return "loading a cached TensorRT engine"
    return "building a TensorRT engine (the first build can take minutes)"


def not_ready_reasons(models: dict[str, ModelVersions], root: Path) -> list[str]:
    out = []
    for name, m in sorted(models.items()):
        if m.active is None:
            states = [f"{v.version}: {v.state} {v.reason}".strip() for v in m.versions.values()]
            out.append(f"{name}: " + ("; ".join(states) or m.error or "no version loaded"))
    return out or (["no models found in " + str(root)] if not models else [])


#: the live figures of each version on trial, by (name, version)
Live = dict[tuple[str, str], dict[str, float]]


def describe(models: dict[str, ModelVersions], live: Live) -> list[dict[str, Any]]:
    """The rows of GET /v1/models: one per model version; `live`, the figures of the versions
    on trial now (edge/models/canary/canaries.py)."""
    rows = []
    for name, m in sorted(models.items()):
        active = m.active.version if m.active else None
        for v in sorted(m.versions.values(), key=lambda v: version_key(v.version)):
            rows.append(_row(name, m, v, active, live.get((name, v.version))))
        if not m.versions:
            rows.append(
                {
                    "name": name,
                    "version": None,
                    "task": None,
                    "state": "failed",
                    "serving": False,
                    "input": None,
                    "reason": m.error,
                }
            )
    return rows


def _row(
    name: str, m: ModelVersions, v: VersionState, active: str | None, live: dict[str, float] | None
) -> dict[str, Any]:
    spec = m.spec
    row: dict[str, Any] = {
        "name": name,
        "version": v.version,
        "task": v.model.task.kind if v.model else (spec.task if spec else None),
        "state": v.state,
        "serving": v.version == active,
        "input": {
            "width": spec.input_width,
            "height": spec.input_height,
            "layout": spec.layout,
            "max_batch": spec.max_batch,
        }
        if spec
        else None,
    }
    if v.reason:
        row["reason"] = v.reason
    if v.model:
        row["providers"] = v.model.providers
        row["layout"] = {"sessions": v.model.layout.sessions, "threads": v.model.layout.threads}
    if spec and spec.versions:
        row["weight"] = spec.versions.get(v.version, 0.0)
    if v.canary is not None:
        row["canary"] = _canary(v.canary, live)
    return row


def _canary(view: dict[str, Any], live: dict[str, float] | None) -> dict[str, Any]:
    """A version's `canary` entry: its policy and incumbent, then the figures (`live` while on
    trial), the decision and its reason."""
    out = dict(view)
    if live is not None:
        out["figures"] = {k: json_number(v) for k, v in live.items()}
    return out


def json_number(v: float) -> float | int | None:
    """A figure as JSON can carry it: rounded, NaN (nothing measured yet) as null."""
    if isinstance(v, int):
        return v
    if math.isnan(v):
        return None
    return round(v, 4)
