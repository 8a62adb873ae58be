"""The model repository: `models/<name>/model.toml` plus `models/<name>/<version>/model.onnx`.

Loads every model's serving versions in the background, keeps each version's state (loading,
ready, failed and why), routes a stream to a version, and hot-reloads: a new or changed version
is loaded and warmed aside, then swapped in atomically, or, newer than the one serving, put on
trial as a canary (edge/rollout.py); a version that fails keeps the old one serving. Worker
threads call `resolve` for every frame; it only reads immutable snapshots.
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

from edge import engine, providers, rollout
from edge.canaryboard import Board
from edge.engine import LoadedModel, ModelLoadError
from edge.modelspec import ModelSpec, ModelSpecError
from edge.rollout import Canary, Decided
from edge.settings import Settings
from edge.shared import Shared

log = logging.getLogger("edge.repository")


class UnknownModel(LookupError):
    """A stream asked for a model or version the repository does not serve."""


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


@dataclass(frozen=True)
class Route:
    """Which model a stream wants: a name, maybe a pinned version, and its A/B assignment."""

    name: str
    version: str | None = None  # pinned by the client (name@version)
    assigned: str | None = None  # sticky A/B assignment from the traffic split
    #: where the stream falls in [0, 1): a canary with share s serves the streams under s
    bucket: float = 1.0

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
    canary: Canary | None = None  # a newer version on trial against `active`
    retries_seen: int = 0  # the operator's retries (edge/canaryboard.py) already applied


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (-1, v)


#: streams fall at 0, 0.618, 0.236, 0.854, ...: any run of them is spread evenly over [0, 1),
#: so a canary's share holds for a handful of streams too (and the first is always in it)
_GOLDEN = (5**0.5 - 1) / 2


class Repository:
    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        *,
        shared: Shared | None = None,
        on_decision: Callable[[Decided], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_failure = on_failure or (lambda _name, _version: None)
        self.root = settings.models
        self._models: dict[str, _Model] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change or (lambda: None)
        shared = shared or Shared(1, 1)
        self.board = Board(shared)
        self._index = shared.index
        self._on_decision = on_decision or (lambda _decided: None)
        self._trials = rollout.Trials(self.board, shared.index, self._decided)
        self._opened = 0
        self._loop: asyncio.AbstractEventLoop | None = None

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
                if v.canary is not None:
                    row["canary"] = rollout.describe(v.canary, m.canary, v.version)
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
    def place(self, route: Route) -> Route:
        """`route` with the stream's place among the streams a canary may take: one more
        stream opened in this process (event loop only)."""
        bucket = (self._opened * _GOLDEN) % 1.0
        self._opened += 1
        return Route(route.name, route.version, route.assigned, bucket)

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
                        return Route(route.name, None, version, route.bucket)
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
        canary = m.canary
        if canary is not None and route.bucket < canary.trial.policy.share:
            return canary.model
        if m.active is None:
            raise UnknownModel(f"model {route.name!r} is not ready")
        return m.active

    def shadow_of(self, name: str) -> LoadedModel | None:
        """The candidate version that samples of this model's frames also run on, if any."""
        m = self._models.get(name)
        return m.shadow if m is not None else None

    def trial_of(self, model: LoadedModel) -> Canary | None:
        """The canary trial `model` takes part in, as the canary or as its incumbent."""
        m = self._models.get(model.name)
        c = m.canary if m is not None else None
        if c is not None and (model is c.model or model is c.incumbent):
            return c
        return None

    def settle(self, canary: Canary, verdict: rollout.Verdict) -> None:
        """A worker reached `verdict` on `canary`: publish it (or take the decision another
        process published first) and apply it."""
        self._trials.settle(canary, verdict)

    def follow(self, canary: Canary) -> None:
        """Apply the decision another process took on `canary`, if there is one."""
        self._trials.follow(canary)

    def _decided(self, canary: Canary, decision: rollout.Decision, mine: bool) -> None:
        m = self._models.get(canary.model.name)
        if m is None or m.canary is not canary:
            return  # superseded meanwhile
        rollout.apply(m, canary, decision)
        self._on_decision(Decided(canary, decision, mine))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_change)

    # -- loading and hot reload (event loop) ------------------------------------------------
    async def refresh(self, executor: Executor, names: list[str] | None = None) -> None:
        """Scan the repository; load new or changed versions aside and swap them in."""
        async with self._lock:
            loop = self._loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(executor, self._scan)
            for name, (spec, error, versions) in found.items():
                if names is not None and name not in names:
                    continue
                fresh = name not in self._models
                m = self._models.setdefault(name, _Model(spec))
                m.error = error
                if spec is not None:
                    m.spec = spec
                if m.canary is not None:
                    self._trials.follow(m.canary)  # decided by another process meanwhile
                rolled = self._rolled_back(name, m, [v.name for v, _ in versions], fresh)
                for vdir, sig in sorted(versions, key=lambda v: _version_key(v[0].name)):
                    old = m.versions.get(vdir.name)
                    if old is not None and old.signature == sig and old.state != "loading":
                        continue
                    if vdir.name in rolled:
                        self._mark_rolled_back(m, vdir.name, sig)
                        continue
                    dirs = [v.name for v, _ in versions if v.name not in rolled]
                    if spec is None or not self._wanted(spec, vdir.name, dirs, m):
                        continue
                    await self._load(loop, executor, m, spec, vdir, sig)
            self._on_change()

    def _rolled_back(self, name: str, m: _Model, versions: list[str], fresh: bool) -> set[str]:
        """The versions not to serve: rolled back here or by another process, unless an
        operator asked for them to be tried again."""
        retries = self.board.retries(name)
        if fresh:
            m.retries_seen = retries
        elif retries > m.retries_seen:  # POST /v1/models/{name}/load {"retry": true}
            m.retries_seen = retries
            on_board = self.board.rolled_back(name, versions)
            for v in [v for v in m.versions.values() if v.state == "rolled_back"]:
                if v.version not in on_board:
                    log.info("model %s@%s: tried again, as an operator asked", name, v.version)
                    del m.versions[v.version]
        local = {v.version for v in m.versions.values() if v.state == "rolled_back"}
        return local | self.board.rolled_back(name, versions)

    def _mark_rolled_back(self, m: _Model, version: str, sig: tuple[int, int]) -> None:
        """A version the gateway rolled back, seen by this process before it loads it."""
        if (old := m.versions.get(version)) is not None and old.state == "rolled_back":
            return
        decision = self.board.decision(m.spec.name if m.spec else "", version)
        reason = decision.reason if decision else "rolled back"
        m.versions[version] = VersionState(
            m.spec.name if m.spec else "", version, "rolled_back", reason, sig,
            canary=rollout.decided_view(decision) if decision else None,
        )  # fmt: skip

    def _wanted(self, spec: ModelSpec, version: str, dirs: list[str], m: _Model) -> bool:
        shadow = str(spec.shadow.get("version", ""))
        if version == shadow:
            return True
        if spec.versions:
            return version in spec.versions
        candidates = sorted((d for d in dirs if d != shadow), key=_version_key)
        if not candidates:
            return False
        if version == candidates[-1]:
            return True
        # a process that starts while the others try the newest: its incumbent first
        return (
            m.active is None
            and len(candidates) > 1
            and version == candidates[-2]
            and self.board.on_trial(spec.name, candidates[-1])
        )

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
            policy = self.board.policy(spec.name, spec.canary)
            if (
                current is not None
                and m.active is not None
                and _version_key(vdir.name) > _version_key(current)
                and policy.enabled
                and self.settings.canary
            ):
                self._trials.start(m, state, m.active, policy)
                return
            if current is None or _version_key(vdir.name) >= _version_key(current):
                rollout.serve(m, state)
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
