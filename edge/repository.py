"""The model repository: `models/<name>/model.toml` plus `models/<name>/<version>/model.onnx`.

Loads every model's serving versions in the background, keeps each version's state (loading,
ready, failed and why), routes a stream to a version, and hot-reloads: a new or changed version
is loaded and warmed aside, then swapped in atomically; a version that fails keeps the old one
serving. Worker threads call `resolve` for every frame; it only reads immutable snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import engine, providers
from edge.engine import LoadedModel, ModelLoadError
from edge.modelspec import ModelSpec, ModelSpecError
from edge.settings import Settings

log = logging.getLogger("edge.repository")


class UnknownModel(LookupError):
    """A stream asked for a model or version the repository does not serve."""


@dataclass
class VersionState:
    name: str
    version: str
    state: str  # loading | ready | failed
    reason: str = ""
    signature: tuple[int, int] = (0, 0)
    model: LoadedModel | None = None


@dataclass(frozen=True)
class Route:
    """Which model a stream wants: a name, maybe a pinned version, and its A/B assignment."""

    name: str
    version: str | None = None  # pinned by the client (name@version)
    assigned: str | None = None  # sticky A/B assignment from the traffic split

    @classmethod
    def parse(cls, text: str) -> Route:
        name, _, version = text.partition("@")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise UnknownModel(f"bad model name {text!r}")
        return cls(name, version or None)


@dataclass
class _Model:
    spec: ModelSpec | None
    versions: dict[str, VersionState] = field(default_factory=dict)
    active: LoadedModel | None = None
    shadow: LoadedModel | None = None
    error: str = ""


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (-1, v)


class Repository:
    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_failure = on_failure or (lambda _name, _version: None)
        self.root = settings.models
        self._models: dict[str, _Model] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change or (lambda: None)

    def close(self) -> None:
        """Release every loaded version's session threads; call once the workers stopped."""
        for m in self._models.values():
            for v in m.versions.values():
                if v.model is not None:
                    v.model.close()

    # -- what clients see -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Every configured model has a warm version serving."""
        return bool(self._models) and all(m.active is not None for m in self._models.values())

    def not_ready_reasons(self) -> list[str]:
        out = []
        for name, m in sorted(self._models.items()):
            if m.active is None:
                states = [f"{v.version}: {v.state} {v.reason}".strip() for v in m.versions.values()]
                out.append(f"{name}: " + ("; ".join(states) or m.error or "no version loaded"))
        return out or (["no models found in " + str(self.root)] if not self._models else [])

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name, m in sorted(self._models.items()):
            active = m.active.version if m.active else None
            for v in sorted(m.versions.values(), key=lambda v: _version_key(v.version)):
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
                    row["layout"] = {
                        "sessions": v.model.layout.sessions,
                        "threads": v.model.layout.threads,
                    }
                if spec and spec.versions:
                    row["weight"] = spec.versions.get(v.version, 0.0)
                rows.append(row)
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

    def names(self) -> list[str]:
        return sorted(self._models)

    # -- routing (called from worker threads: reads only) ------------------------------------
    def assign(self, route: Route, key: str) -> Route:
        """Validate a stream's route and give it a sticky A/B version, if the model splits."""
        m = self._models.get(route.name)
        if m is None:
            raise UnknownModel(f"no model named {route.name!r}; serving {self.names()}")
        if route.version is not None:
            v = m.versions.get(route.version)
            if v is None or v.state != "ready":
                raise UnknownModel(f"model {route.name!r} has no ready version {route.version!r}")
            return route
        if m.spec and m.spec.versions:
            total = sum(m.spec.versions.values())
            if total > 0:
                h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
                acc = 0.0
                for version, weight in sorted(m.spec.versions.items()):
                    acc += weight / total
                    if h < acc:
                        return Route(route.name, None, version)
        return route

    def resolve(self, route: Route) -> LoadedModel:
        m = self._models.get(route.name)
        if m is None:
            raise UnknownModel(f"no model named {route.name!r}")
        for want in (route.version, route.assigned):
            if want is not None:
                v = m.versions.get(want)
                if v is not None and v.model is not None:
                    return v.model
                if route.version is not None:
                    raise UnknownModel(f"{route.name}@{want} is not loaded")
        if m.active is None:
            raise UnknownModel(f"model {route.name!r} is not ready")
        return m.active

    def shadow_of(self, name: str) -> LoadedModel | None:
        """The candidate version that samples of this model's frames also run on, if any."""
        m = self._models.get(name)
        return m.shadow if m is not None else None

    # -- loading and hot reload (event loop) ------------------------------------------------
    async def refresh(self, executor: Executor, names: list[str] | None = None) -> None:
        """Scan the repository; load new or changed versions aside and swap them in."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(executor, self._scan)
            for name, (spec, error, versions) in found.items():
                if names is not None and name not in names:
                    continue
                m = self._models.setdefault(name, _Model(spec))
                m.error = error
                if spec is not None:
                    m.spec = spec
                for vdir, sig in versions:
                    old = m.versions.get(vdir.name)
                    if old is not None and old.signature == sig and old.state != "loading":
                        continue
                    if spec is None or not self._wanted(spec, vdir.name, [v for v, _ in versions]):
                        continue
                    await self._load(loop, executor, m, spec, vdir, sig)
            self._on_change()

    def _wanted(self, spec: ModelSpec, version: str, all_dirs: list[Path]) -> bool:
        shadow = str(spec.shadow.get("version", ""))
        if version == shadow:
            return True
        if spec.versions:
            return version in spec.versions
        candidates = [d.name for d in all_dirs if d.name != shadow]
        return bool(candidates) and version == max(candidates, key=_version_key)

    async def _load(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        m: _Model,
        spec: ModelSpec,
        vdir: Path,
        sig: tuple[int, int],
    ) -> None:
        state = VersionState(spec.name, vdir.name, "loading", self._loading_reason(spec, vdir), sig)
        previous = m.versions.get(vdir.name)
        m.versions[vdir.name] = state
        log.info("model %s@%s: loading %s", spec.name, vdir.name, state.reason)
        s = self.settings
        try:
            model = await loop.run_in_executor(
                executor,
                lambda: engine.load(
                    self.root,
                    spec,
                    vdir,
                    workers=s.worker_count,
                    preference=s.providers,
                    trt_cache=s.trt_cache,
                    trt_fp16=s.trt_fp16,
                    trt_workspace_mb=s.trt_workspace_mb,
                ),
            )
        except ModelLoadError as e:
            state.state, state.reason = "failed", str(e)
            log.error(
                "model %s@%s: failed to load: %s",
                spec.name,
                vdir.name,
                e,
                extra={"model": f"{spec.name}@{vdir.name}"},
            )
            self._on_failure(spec.name, vdir.name)
            if previous is not None and previous.model is not None:
                m.versions[vdir.name] = previous  # keep serving what worked
                previous.reason = f"reload failed: {e}"
            return
        state.state, state.model = "ready", model
        if vdir.name == str(spec.shadow.get("version", "")):
            m.shadow = model
            log.info(
                "model %s@%s: ready as a shadow (sampled, never answers)", spec.name, vdir.name
            )
            return
        if not spec.versions:
            current = m.active.version if m.active else None
            if current is None or _version_key(vdir.name) >= _version_key(current):
                m.active = model
                for other in list(m.versions.values()):
                    if other.version != vdir.name and other.state == "ready":
                        other.state, other.model = "retired", None
        else:
            weights = spec.versions
            best = max(
                (v for v in m.versions.values() if v.model),
                key=lambda v: weights.get(v.version, 0.0),
            )
            m.active = best.model
        log.info("model %s@%s: ready, serving", spec.name, vdir.name)

    def _loading_reason(self, spec: ModelSpec, vdir: Path) -> str:
        """Say so when this load will build a TensorRT engine: that can take minutes."""
        prefs = spec.providers or self.settings.providers
        if prefs == ("auto",):  # auto times TensorRT too when it can start
            prefs = tuple(providers.auto_candidates())
        if "tensorrt" not in prefs or "TensorrtExecutionProvider" not in providers.usable():
            return ""
        cache = self.settings.trt_cache
        model = vdir / "model.onnx"
        if cache is not None and model.is_file():
            if providers.engine_cached(providers.engine_cache_dir(cache, model)):
                return "loading a cached TensorRT engine"
        return "building a TensorRT engine (the first build can take minutes)"

    def _scan(self) -> dict[str, tuple[ModelSpec | None, str, list[tuple[Path, tuple[int, int]]]]]:
        out: dict[str, tuple[ModelSpec | None, str, list[tuple[Path, tuple[int, int]]]]] = {}
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
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
