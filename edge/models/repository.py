"""The model repository: `models/<name>/model.toml` plus `models/<name>/<version>/model.onnx`.

Loads every model's serving versions in the background, keeps each version's state (loading,
ready, failed and why), routes a stream to a version (`route`), and hot-reloads: a new or
changed version is loaded and warmed aside, then swapped in atomically, or, newer than the one
serving, put on trial as a canary (edge/models/canary/canaries.py, which also decides it); a
version that fails keeps the old one serving. Worker threads call `resolve` for every frame; it
only reads immutable snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.inference import engine
from edge.inference.engine import LoadedModel, ModelLoadError
from edge.inference.modelspec import ModelSpec
from edge.models import versions as disk
from edge.models.canary.canaries import Canaries
from edge.models.versions import ModelVersions, VersionState, version_key
from edge.settings import Settings

log = logging.getLogger("edge.repository")


class UnknownModel(LookupError):
    """A stream asked for a model or version the repository does not serve."""


@dataclass(frozen=True)
class Route:
    """Which model a stream wants: a name, maybe a pinned version, and where the repository
    placed it (`Repository.route`): its A/B version and its place among a canary's streams."""

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


@dataclass(frozen=True)
class Routed:
    """A stream's route and the version that answers it now."""

    route: Route
    model: LoadedModel


#: streams fall at 0, 0.618, 0.236, 0.854, ...: any run of them is spread evenly over [0, 1),
#: so a canary's share holds for a handful of streams too (and the first is always in it)
_GOLDEN = (5**0.5 - 1) / 2


class Repository:
    def __init__(
        self,
        settings: Settings,
        canaries: Canaries,
        on_change: Callable[[], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        #: the canary trials and their decisions; the pipeline feeds them (`judge`)
        self.canaries = canaries
        self._on_failure = on_failure or (lambda _name, _version: None)
        self.root = settings.models
        self._models: dict[str, ModelVersions] = {}
        self._lock = asyncio.Lock()
        self._on_change = on_change or (lambda: None)
        self._opened = 0
        #: where this process's sequence of buckets starts, drawn at random: the first stream a
        #: process opens no longer always lands on a canary (issue #23)
        self._phase = secrets.randbits(53) / 2**53

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
        return disk.describe(self._models, self.canaries.live())

    def names(self) -> list[str]:
        return sorted(self._models)

    # -- routing ------------------------------------------------------------------------------
    def route(self, asked: str | Route, session: str | None = None) -> Routed:
        """Which version answers what a client asked for: `asked`, a model name or
        name@version (as the client wrote it, or parsed), checked (`assign`); for a stream
        (`session`, its id; event loop only) placed too: its version of the model's traffic
        split, sticky by `session`, and its place among the streams a canary may take.
        Without `session` (a probe at admission, before the stream exists) checked only.
        Raises UnknownModel."""
        route = Route.parse(asked) if isinstance(asked, str) else Route(asked.name, asked.version)
        if session is not None:
            route = self._place(self.assign(route, session))
        else:
            self.assign(route, "probe")
        return Routed(route, self.resolve(route))

    def assign(self, route: Route, key: str) -> Route:
        """Check a stream's route (the model exists; a pinned version is loaded) and give it a
        sticky A/B version (by `key`), if the model splits its traffic."""
        m = self._models.get(route.name)
        if m is None:
            raise UnknownModel(f"no model named {route.name!r}; serving {self.names()}")
        if route.version is not None:
            v = m.versions.get(route.version)
            if v is None or v.model is None:
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

    def _place(self, route: Route) -> Route:
        """`route` with the stream's bucket: where it falls among the streams a canary may
        take, one more stream opened in this process. The buckets step by the golden ratio
        (streams spread evenly over the share) from a random phase, so which stream lands on
        a canary cannot be foretold."""
        bucket = (self._phase + self._opened * _GOLDEN) % 1.0
        self._opened += 1
        return Route(route.name, route.version, route.assigned, bucket)

    def resolve(self, route: Route) -> LoadedModel:
        """The version that answers a routed stream now (worker threads too: reads only): its
        pinned or A/B version, else the canary when the stream is in its share, else the
        version serving."""
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
        canary = self.canaries.serving(route.name, route.bucket)
        if canary is not None:
            return canary
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
            found = await loop.run_in_executor(executor, disk.scan, self.root)
            for name, (spec, error, versions) in found.items():
                if names is not None and name not in names:
                    continue
                fresh = name not in self._models
                m = self._models.setdefault(name, ModelVersions(name, spec))
                m.error = error
                if spec is not None:
                    m.spec = spec
                rolled = self.canaries.rescan(m, [v.name for v, _ in versions], fresh)
                for vdir, sig in sorted(versions, key=lambda v: version_key(v[0].name)):
                    old = m.versions.get(vdir.name)
                    if old is not None and old.signature == sig and old.state != "loading":
                        continue
                    if vdir.name in rolled:
                        self.canaries.mark_rolled_back(m, vdir.name, sig)
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
            and self.canaries.on_trial(spec.name, candidates[-1])
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
            if self.canaries.arrived(m, state):
                return  # on trial
        else:
            weights = spec.versions
            best = max(
                (v for v in m.versions.values() if v.model),
                key=lambda v: weights.get(v.version, 0.0),
            )
            m.active = best.model
        log.info("model %s@%s: ready, serving", spec.name, vdir.name)
