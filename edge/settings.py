"""One validated settings object, built once at the entry point and passed down.

Sources, lowest to highest priority: defaults, `EDGE_*` environment variables, CLI flags.
Nothing else in the package reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_MODELS = Path(__file__).resolve().parent.parent / "models"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and how to fix it."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    models: Path = DEFAULT_MODELS
    default_model: str = "blazeface"
    #: worker threads that decode and run models; 0 means one per CPU core
    workers: int = 0
    #: ONNX Runtime execution provider preference, filtered by what is installed
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    trt_cache: Path | None = None
    trt_fp16: bool = True
    trt_workspace_mb: int = 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_message_bytes: int = 4096
    #: results queued for one client before its new frames are dropped as `overload`
    max_pending_results: int = 8
    #: a client whose socket accepts nothing for this long is disconnected
    send_timeout_s: float = 10.0
    max_streams: int = 64
    #: frames one model may have running at once; 0: no limit beyond the workers
    max_inflight: int = 0
    drain_seconds: float = 20.0
    #: after SIGTERM, how long readiness is 503 (and new streams refused) before open streams
    #: are told goaway, so load balancers stop sending reconnects here first
    drain_delay_s: float = 1.0
    heartbeat_s: float = 20.0
    idle_timeout_s: float = 120.0
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | text
    #: OpenTelemetry spans per frame, exported with OTLP (the `otel` extra)
    tracing: bool = False
    watch_models_s: float = 2.0  # model repository poll interval; 0 turns hot reload off
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_tokens: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    stun_servers: tuple[str, ...] = ()
    turn_servers: tuple[str, ...] = ()
    web_root: Path = field(default=Path(__file__).resolve().parent.parent / "web")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535, got {self.port}")
        if self.workers < 0:
            raise SettingsError("workers must be >= 0 (0: one per CPU core)")
        for name in (
            "max_frame_bytes",
            "max_pixels",
            "max_message_bytes",
            "max_pending_results",
            "max_streams",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if self.drain_seconds < 0 or self.send_timeout_s <= 0:
            raise SettingsError("drain_seconds must be >= 0 and send_timeout_s > 0")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError("log_level must be one of debug, info, warning, error")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError("log_format must be auto, json or text")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("tls_cert and tls_key go together: set both or neither")
        unknown = set(self.providers) - {"tensorrt", "cuda", "xnnpack", "cpu"}
        if unknown:
            raise SettingsError(
                f"providers: unknown {sorted(unknown)}; use tensorrt, cuda, xnnpack, cpu"
            )

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @classmethod
    def from_sources(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Defaults, then `EDGE_<NAME>` variables, then `overrides` (CLI flags; None skipped)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = "EDGE_" + f.name.upper()
            if key in env:
                values[f.name] = _parse(f.name, str(f.type), env[key], key)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        try:
            return replace(cls(), **values)
        except TypeError as e:
            raise SettingsError(str(e)) from e


def _parse(name: str, typ: str, raw: str, key: str) -> Any:
    try:
        if typ.startswith("tuple"):
            return tuple(
                p.strip().lower() if name == "providers" else p.strip()
                for p in raw.split(",")
                if p.strip()
            )
        if typ == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        if "Path" in typ:
            return Path(raw) if raw else None
        return raw
    except ValueError as e:
        raise SettingsError(f"{key}={raw!r}: {e}") from e
