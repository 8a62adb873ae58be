"""The model repository: `models/<name>/model.toml` plus `models/<name>/<version>/model.onnx`.

Loads every model's serving versions in the background, keeps each version's state (loading,
ready, failed and why), routes a stream to a version, and hot-reloads: a new or changed version
is loaded and warmed aside, then swapped in atomically, or, newer than the one serving, put on
trial as a canary (edge/models/canary/rollout.py); a version that fails keeps the old one serving.
Worker
threads call `resolve` for every frame; it only reads immutable snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.inference import engine
from edge.inference.engine import LoadedModel, ModelLoadError
from edge.inference.modelspec import ModelSpec
from edge.models import versions as disk
from edge.models.canary import rollout
from edge.models.canary.board import Board
from edge.models.canary.rollout import Canary, Decided
from edge.models.versions import ModelVersions, VersionState, version_key
from edge.settings import Settings
from edge.sharedmem import Shared

log = logging.getLogger("edge.repository")


class UnknownModel(LookupError):
    """A stream asked for a model or version the repository does not serve."""


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
        self._models: dict[str, ModelVersions] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change or (lambda: None)
        shared = shared or Shared(1, 1)
        self.board = Board(shared)
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
        return disk.not_ready_reasons(self._models, self.root)

    def describe(self) -> list[dict[str, Any]]:
        return disk.describe(self._models)

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
            found = await loop.run_in_executor(executor, disk.scan, self.root)
            for name, (spec, error, versions) in found.items():
                if names is not None and name not in names:
                    continue
                fresh = name not in self._models
                m = self._models.setdefault(name, ModelVersions(name, spec))
                m.error = error
                if spec is not None:
                    m.spec = spec
                if m.canary is not None:
                    self._trials.follow(m.canary)  # decided by another process meanwhile
                rolled = rollout.not_to_serve(self.board, m, [v.name for v, _ in versions], fresh)
                for vdir, sig in sorted(versions, key=lambda v: version_key(v[0].name)):
                    old = m.versions.get(vdir.name)
                    if old is not None and old.signature == sig and old.state != "loading":
                        continue
                    if vdir.name in rolled:
                        rollout.mark_rolled_back(self.board, m, vdir.name, sig)
                        continue
                    dirs = [v.name for v, _ in versions if v.name not in rolled]
                    if spec is None or not self._wanted(spec, vdir.name, dirs, m):
                        continue
                    await self._load(loop, executor, m, spec, vdir, sig)
            self._on_change()

    def _wanted(self, spec: ModelSpec, version: str, dirs: list[str], m: ModelVersions) -> bool:
        shadow = str(spec.shadow.get("version", ""))
        if version == shadow:
            return True
        if spec.versions:
            return version in spec.versions
        candidates = sorted((d for d in dirs if d != shadow), key=version_key)
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
        m: ModelVersions,
        spec: ModelSpec,
        vdir: Path,
        sig: tuple[int, int],
    ) -> None:
        state = VersionState(
            spec.name, vdir.name, "loading", disk.loading_reason(self.settings, spec, vdir), sig
        )
        previous = m.versions.get(vdir.name)
        m.versions[vdir.name] = state
        log.info("model %s@%s: loading %s", spec.name, vdir.name, state.reason)
        s = self.settings
        try:
            model = await loop.run_in_executor(executor, lambda: engine.load(
                self.root, spec, vdir, workers=s.worker_count, preference=s.providers,
                trt_cache=s.trt_cache, trt_fp16=s.trt_fp16, trt_workspace_mb=s.trt_workspace_mb,
            ))  # fmt: skip
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
                and version_key(vdir.name) > version_key(current)
                and policy.enabled
                and self.settings.canary
            ):
                self._trials.start(m, state, m.active, policy)
                return
            if current is None or version_key(vdir.name) >= version_key(current):
                self._trials.serve(m, state)
        else:
            weights = spec.versions
            best = max(
                (v for v in m.versions.values() if v.model),
                key=lambda v: weights.get(v.version, 0.0),
            )
            m.active = best.model
        log.info("model %s@%s: ready, serving", spec.name, vdir.name)
