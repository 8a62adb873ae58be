"""One validated settings object, built once at the entry point and passed down.

Sources, lowest to highest priority: defaults, `EDGE_*` environment variables, CLI flags.
Nothing else in the package reads the environment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from edge.sinks import SinkConfigError, parse_all

#: the dashboard's files, carried in the package (edge/web/) wherever it is installed
WEB_ROOT = Path(str(resources.files("edge") / "web"))
#: what a static token may be made of: characters that travel unchanged in an Authorization
#: header (RFC 6750), a WebSocket subprotocol (an RFC 7230 token) and a JSON string
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+]+")
_ORIGIN = re.compile(r"https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


#: sizes and counts that must be at least 1
_SIZES = ("max_frame_bytes", "max_pixels", "max_png_pixels", "max_message_bytes",
          "max_infer_bytes", "max_json_bytes", "max_pending_results", "max_streams",
          "max_pending_auth", "max_pending_auth_per_client")  # fmt: skip
#: limits that 0 turns off
_LIMITS = ("max_fps_per_stream", "max_fps_per_client", "max_streams_per_token",
           "max_oversize_frames", "max_streams_per_client")  # fmt: skip
#: intervals and counts that may be 0 (off, no limit, or chosen for the machine) but never
#: negative
_OFF_AT_ZERO = ("heartbeat_s", "watch_models_s", "drain_delay_s", "max_inflight",
                "max_connections")  # fmt: skip
#: waits that must be positive
_DURATIONS = ("request_timeout_s", "idle_timeout_s")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting and how to fix it."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    #: the gRPC services (docs/protocols.md) listen here, on `host` too; 0 turns gRPC off
    grpc_port: int = 8081
    #: the model repository; by default a per-user data directory (`default_models`)
    models: Path = field(default_factory=lambda: default_models(os.environ))
    default_model: str = "blazeface"
    #: serving processes behind the one port; 0 (`auto`): one per CPU core, or on a GPU
    #: machine enough to keep the GPU fed (edge.process.supervisor.process_count); 1: no supervisor
    processes: int = 0
    #: worker threads per serving process that decode and run models; 0: the CPU cores
    #: shared out among the processes
    workers: int = 0
    #: ONNX Runtime execution providers: `auto` times each model on every provider that can
    #: start here and keeps the faster; an explicit list is a preference, filtered by what
    #: is installed
    providers: tuple[str, ...] = ("auto",)
    trt_cache: Path | None = None
    trt_fp16: bool = True
    trt_workspace_mb: int = 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    #: PNG decodes at full size whatever the model needs (a flat 4096 x 4096 PNG is ~60 KB on
    #: the wire but ~250 ms and +160 MB to decode), so it gets its own, lower pixel limit
    max_png_pixels: int = 2048 * 2048
    max_message_bytes: int = 4096
    #: the largest KServe v2 infer request: its JSON and binary tensors together (docs/protocols.md)
    max_infer_bytes: int = 32 * 1024 * 1024
    #: the largest JSON in a KServe v2 REST request (all of a JSON body, or the JSON header
    #: of the binary extension): JSON costs far more to parse than its size, so large
    #: tensors go as binary data
    max_json_bytes: int = 1024 * 1024
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
    #: a connection must send a complete request head within this (slow loris), and a request
    #: body within this again; also the idle time allowed between HTTP requests
    request_timeout_s: float = 15.0
    heartbeat_s: float = 20.0
    #: a serving process whose event loop stays this far behind (the median of a second)
    #: refuses new streams (they go to the other processes) until it catches up; 0: off
    max_loop_lag_ms: int = 500
    idle_timeout_s: float = 120.0
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | text
    #: OpenTelemetry spans per frame, exported with OTLP (the `otel` extra)
    tracing: bool = False
    watch_models_s: float = 2.0  # model repository poll interval; 0 turns hot reload off
    #: a version newer than the one serving enters as a canary (docs/models.md); off: it
    #: replaces the serving one at once
    canary: bool = True
    #: run the serving processes on uvloop where it is installed (the default on Linux and
    #: macOS); off: asyncio's own event loop
    uvloop: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: static API tokens (docs/security.md); any token setting, file or JWT key turns auth on
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    #: a file of static tokens, one a line (blank lines and `#` comments skipped)
    auth_tokens_file: Path | None = None
    #: HS256 shared secret for signed JWTs
    jwt_secret: str = field(default="", repr=False)
    #: RS256 public key (PEM file) for signed JWTs
    jwt_public_key: Path | None = None
    #: when set, a JWT's `aud` must name it
    jwt_audience: str = ""
    #: seconds a token-less WebSocket has to send its `auth` message
    auth_timeout_s: float = 5.0
    #: token-less WebSockets waiting for their `auth` message, in the whole gateway and per
    #: client address; they hold no stream slot. gRPC's open calls (health, reflection) have
    #: the same bounds, in a pool of their own (docs/security.md)
    max_pending_auth: int = 32
    max_pending_auth_per_client: int = 4
    #: open streams one client address may hold, whatever its token; 0: no limit beyond
    #: max_streams
    max_streams_per_client: int = 32
    #: connections one serving process holds at once; 0: its open-file limit less a reserve
    max_connections: int = 0
    #: browser origins (scheme://host[:port]) besides the gateway's own that may use /v1/
    allowed_origins: tuple[str, ...] = ()
    #: frames per second one stream, and one client address, may send; 0 turns a limit off
    max_fps_per_stream: int = 120
    max_fps_per_client: int = 480
    #: open streams one token (one JWT subject) may hold; 0: no limit beyond max_streams
    max_streams_per_token: int = 16
    #: consecutive frames over max_frame_bytes after which a WebSocket is closed with 1009
    max_oversize_frames: int = 3
    #: result sinks, one URL each (docs/sinks.md); they may hold credentials, so never shown
    sinks: tuple[str, ...] = field(default=(), repr=False)
    #: messages each sink holds while its broker is slow or away; past it the oldest go
    sink_queue: int = 1024
    #: a sink's connect, and each batch it publishes, must finish within this
    sink_timeout_s: float = 5.0
    #: the longest wait between a sink's reconnect attempts (they start at half a second)
    sink_retry_max_s: float = 30.0
    stun_servers: tuple[str, ...] = ()
    turn_servers: tuple[str, ...] = ()
    #: which of an offer's ICE candidates get connectivity checks: any, private (the offer's
    #: source address and private ranges) or source (its source address only)
    webrtc_peer_addresses: str = "any"
    web_root: Path = WEB_ROOT

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535, got {self.port}")
        if not 0 <= self.grpc_port <= 65535:
            raise SettingsError(
                f"grpc_port must be 0..65535 (0 turns gRPC off), got {self.grpc_port}"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise SettingsError(
                f"grpc_port and port are both {self.port}; give gRPC a port of its own, or 0 "
                "to turn it off"
            )
        if self.workers < 0:
            raise SettingsError("workers must be >= 0 (0: one per CPU core)")
        if not 0 <= self.processes <= 256:
            raise SettingsError("processes must be auto (0) or 1..256")
        if self.max_loop_lag_ms < 0:
            raise SettingsError("max_loop_lag_ms must be >= 0 (0 turns the check off)")
        _at_least(self, _OFF_AT_ZERO, 0, " (0 turns it off)")
        for name in _DURATIONS:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0 seconds")
        _at_least(self, ("trt_workspace_mb",), 1)
        _at_least(self, _SIZES, 1)
        if self.drain_seconds < 0 or self.send_timeout_s <= 0:
            raise SettingsError("drain_seconds must be >= 0 and send_timeout_s > 0")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError("log_level must be one of debug, info, warning, error")
        if self.webrtc_peer_addresses not in ("any", "private", "source"):
            raise SettingsError("webrtc_peer_addresses must be any, private or source")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError("log_format must be auto, json or text")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("tls_cert and tls_key go together: set both or neither")
        _at_least(self, _LIMITS, 0, " (0 turns the limit off)")
        if self.max_connections < 0:
            raise SettingsError("max_connections must be >= 0 (0: from the open-file limit)")
        if self.auth_timeout_s <= 0:
            raise SettingsError("auth_timeout_s must be > 0 (seconds to wait for an auth message)")
        for name in ("auth_tokens_file", "jwt_public_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise SettingsError(f"{name}: {path} is not a file; fix the path or unset it")
        for token in self.auth_tokens:
            _check_token("auth_tokens", token)
        if self.auth_tokens_file is not None:
            read_token_file(self.auth_tokens_file)
        if self.jwt_secret and len(self.jwt_secret) < 32:
            raise SettingsError(
                "jwt_secret must be at least 32 characters (an HS256 key as long as the hash, "
                "RFC 7518 3.2); generate one with `openssl rand -hex 32`"
            )
        for origin in self.allowed_origins:
            if not _ORIGIN.fullmatch(origin):
                raise SettingsError(
                    f"allowed_origins: {origin!r} is not an origin; write scheme://host[:port] "
                    "with no path, e.g. https://edge.example.com (no wildcards)"
                )
        unknown = set(self.providers) - {"auto", "tensorrt", "cuda", "xnnpack", "cpu"}
        if unknown:
            raise SettingsError(
                f"providers: unknown {sorted(unknown)}; use auto, or a list of tensorrt, "
                "cuda, xnnpack, cpu"
            )
        if "auto" in self.providers and len(self.providers) > 1:
            raise SettingsError("providers: `auto` stands alone; or list the providers to use")
        if self.sink_queue < 1 or self.sink_timeout_s <= 0 or self.sink_retry_max_s < 0.5:
            raise SettingsError(
                "sink_queue must be >= 1, sink_timeout_s > 0 and sink_retry_max_s >= 0.5"
            )
        try:
            parse_all(self.sinks)
        except SinkConfigError as e:
            raise SettingsError(f"sinks: {e}") from None

    @property
    def auth_enabled(self) -> bool:
        """Tokens are required once any token source or JWT key is configured."""
        return bool(
            self.auth_tokens or self.auth_tokens_file or self.jwt_secret or self.jwt_public_key
        )

    @property
    def worker_count(self) -> int:
        """Worker threads of one serving process: the cores shared out among the processes."""
        return self.workers or max(1, (os.cpu_count() or 1) // max(1, self.processes))

    @classmethod
    def from_sources(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        flags: Mapping[str, str] | None = None,
    ) -> Settings:
        """Defaults, then `EDGE_<NAME>` variables, then `flags` (command-line text, parsed
        like the variables), then `overrides` (typed values; None skipped). An error names
        the variable or flag that the bad value came from."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for f in fields(cls):
            key = "EDGE_" + f.name.upper()
            if key in env:
                origin[f.name] = key
                values[f.name] = _parse(f.name, str(f.type), env[key], origin[f.name])
        types = {f.name: str(f.type) for f in fields(cls)}
        for name, raw in (flags or {}).items():
            if raw is not None:
                origin[name] = flag(name)
                values[name] = _parse(name, types[name], raw, origin[name])
        values.setdefault("models", default_models(env))
        for name, value in (overrides or {}).items():
            if value is not None:
                origin[name] = flag(name)
                values[name] = value
        try:
            return replace(cls(), **values)
        except SettingsError as e:
            raise SettingsError(_named(str(e), origin)) from None
        except TypeError as e:
            raise SettingsError(str(e)) from e


def default_models(env: Mapping[str, str]) -> Path:
    """The model repository when neither `--models` nor `EDGE_MODELS` names one: the user's
    data directory (XDG: `$XDG_DATA_HOME/edge-gateway/models`, by default
    `~/.local/share/edge-gateway/models`), never the installed package's folder."""
    data = Path(env.get("XDG_DATA_HOME") or ".")
    if not data.is_absolute():  # unset, or relative: XDG says to ignore it
        data = Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return data / "edge-gateway" / "models"


def flag(name: str) -> str:
    """The command-line flag of a setting (`serve --max-streams`; sinks: `--sink`)."""
    return "--sink" if name == "sinks" else "--" + name.replace("_", "-")


def variable(name: str) -> str:
    """The environment variable of a setting."""
    return "EDGE_" + name.upper()


def unknown_variables(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A line for each `EDGE_*` variable that names no setting, with the closest that does:
    a misspelt variable would otherwise be ignored without a word."""
    env = os.environ if env is None else env
    known = [variable(f.name) for f in fields(Settings)]
    for key in sorted(k for k in env if k.startswith("EDGE_") and k not in known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "no setting has that name"
        yield f"{key} is not a setting and is ignored ({hint}; docs/settings.md)"


def _named(message: str, origin: Mapping[str, str]) -> str:
    """`message` and where its setting's value came from, when not from the default (the
    name only: a value may hold a password)."""
    first = re.match(r"\w+", message)
    name = first.group() if first else ""
    return f"{message} (set by {origin[name]})" if name in origin else message


def read_token_file(path: Path) -> tuple[str, ...]:
    """The tokens in an `auth_tokens_file`: one a line; blank lines and `#` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as e:
        raise SettingsError(f"auth_tokens_file: cannot read {path}: {e}") from None
    tokens = tuple(t for t in (ln.strip() for ln in lines) if t and not t.startswith("#"))
    for n, token in enumerate(tokens, 1):
        _check_token(f"auth_tokens_file ({path}, token {n})", token)
    return tokens


def _at_least(settings: Settings, names: tuple[str, ...], least: int, note: str = "") -> None:
    for name in names:
        if getattr(settings, name) < least:
            raise SettingsError(f"{name} must be >= {least}{note}")


def _check_token(where: str, token: str) -> None:
    if not TOKEN_PATTERN.fullmatch(token):
        raise SettingsError(
            f"{where}: a token may hold letters, digits and -._~+ only, so that it can travel "
            "in a header, a query string and a WebSocket subprotocol; generate one with "
            "`openssl rand -hex 32`"
        )


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
            if name == "processes" and raw.strip().lower() == "auto":
                return 0
            if name == "processes" and raw.strip() == "0":
                raise ValueError("expected auto or a number of processes from 1")
            return int(raw)
        if typ == "float":
            return float(raw)
        if "Path" in typ:
            return Path(raw) if raw else None
        return raw
    except ValueError as e:
        raise SettingsError(f"{key}: {_plain(e, raw)}") from None


def _plain(e: ValueError, raw: str) -> str:
    """int()'s and float()'s complaint in a person's words."""
    text = str(e)
    if text.startswith("invalid literal for int()"):
        return f"{raw!r} is not a whole number"
    if text.startswith("could not convert string to float"):
        return f"{raw!r} is not a number"
    return f"{raw!r}: {text}"
