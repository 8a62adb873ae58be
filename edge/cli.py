"""`edge serve`, `edge models pull|list`, `edge stream` and `edge bench`: the entry point
parses settings once (`edge stream` is a client of a gateway and takes none; edge.client.run
does its work; edge.bench does `edge bench`'s)."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import NoReturn

from edge import __version__
from edge.settings import Settings, SettingsError, flag, unknown_variables, variable

log = logging.getLogger("edge")

#: the `models` commands' --models help: where the repository is when none is named
_REPOSITORY = (
    "model repository (EDGE_MODELS; default $XDG_DATA_HOME/edge-gateway/models, "
    "i.e. ~/.local/share/edge-gateway/models)"
)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the option, and exit code 2, as every other user
    error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


#: `edge serve`'s flags: the setting each sets and what it is for; its variable and default
#: are read from Settings, so the help cannot drift from what the gateway does
SERVE_FLAGS = {
    "host": "address to bind",
    "port": "HTTP port: the dashboard, the WebSocket, WebRTC and the HTTP APIs",
    "grpc_port": "gRPC port (docs/protocols.md); 0: no gRPC",
    "models": "model repository: a folder per model with its model.toml and versions",
    "processes": "serving processes behind the port: auto (one per core, 4 with a GPU) "
    "or a number; 1: one process, no supervisor",
    "workers": "inference threads per serving process; 0: the cores shared out",
    "max_streams": "concurrent streams in the whole gateway; more get 503 and Retry-After",
    "max_inflight": "frames one model may have running at once; 0: no limit but the workers",
    "log_level": "debug, info, warning or error",
    "sinks": "publish every result to this broker too (mqtt://, mqtts://, nats://; "
    "repeat for several; docs/sinks.md)",
    "tls_cert": "PEM certificate: serve HTTPS, WSS and gRPC over TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
}


#: each command's one-line help (in `edge --help`) and its description (in its own --help)
COMMANDS = {
    "serve": ("run the gateway", "Run the gateway. Every flag also has an EDGE_* variable "
              "(flags win); the other settings are variables only (docs/settings.md)."),
    "models": ("manage the model repository",
               "Fetch the default models' weights, or list what a repository holds."),
    "pull": ("fetch the default models into the repository",
             "Fetch pinned model weights, check their digests and install them; progress "
             "goes to stderr, one `ok PATH` line per model to stdout."),
    "list": ("show the models in the repository",
             "One line per model: name, versions, and whether its weights are intact."),
    "stream": ("stream a camera, video file, RTSP/HTTP URL or images to a gateway",
               "Stream frames to a gateway and write one JSON line per reply "
               "(docs/client.md)."),
    "bench": ("measure the gateway on this machine, as a report",
              "Run the gateway against this machine's ceiling and write a Markdown report "
              "with charts (docs/benchmarks.md)."),
}  # fmt: skip


def _command(sub: argparse._SubParsersAction[_Parser], name: str) -> _Parser:
    summary, description = COMMANDS[name]
    return sub.add_parser(name, help=summary, description=description)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edge",
        description="Real-time inference gateway: serve models to cameras and clients over "
        "WebSocket, WebRTC, gRPC and KServe v2, and the tools around it.",
    )
    p.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    models = _command(sub, "models")
    msub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    pull = _command(msub, "pull")
    pull.add_argument("--models", type=Path, help=_REPOSITORY)
    pull.add_argument("names", nargs="*", help="models to fetch (default: all known)")
    ls = _command(msub, "list")
    ls.add_argument("--models", type=Path, help=_REPOSITORY)
    _stream_parser(sub)
    from edge.bench.options import arguments

    arguments(_command(sub, "bench"))
    return p


def _serve_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    serve = _command(sub, "serve")
    defaults = {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default
        for f in fields(Settings)
    }
    for name, text in SERVE_FLAGS.items():
        shown = _shown(name, defaults[name])
        serve.add_argument(
            flag(name),
            dest=name,
            metavar=name.upper() if name != "sinks" else "URL",
            action="append" if name == "sinks" else "store",
            help=f"{text} ({variable(name)}; default: {shown})".replace("%", "%%"),
        )


def _shown(name: str, default: object) -> str:
    if name == "processes" and default == 0:
        return "auto"
    if default is None or default == ():
        return "none"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def _stream_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    s = _command(sub, "stream")
    s.add_argument(
        "source",
        help="a camera (/dev/video0 or 0), a video file, an rtsp:// or http:// URL, "
        "or a directory or glob of images",
    )
    s.add_argument(
        "--url",
        action="append",
        required=True,
        help="the gateway, e.g. ws://host:8080 (repeat for replicas: a goaway moves on)",
    )
    s.add_argument("--model", help="model name or name@version (default: the gateway's)")
    s.add_argument("--token", help="bearer token (sent in the Authorization header)")
    s.add_argument("--fps", type=_positive, help="frames a second (files: their own rate)")
    s.add_argument("--size", type=_size, help="scale frames to WIDTHxHEIGHT before encoding")
    s.add_argument("--quality", type=_quality, default=85, help="JPEG quality 1-100 (85)")
    s.add_argument("--threshold", type=float, help="detection score threshold 0-1")
    s.add_argument(
        "--transport",
        choices=("websocket", "webrtc"),
        default="websocket",
        help="websocket (JPEG frames, credits; the default) or webrtc (a video track)",
    )
    s.add_argument("--out", help="write one JSON line per reply to this file (- for stdout)")
    s.add_argument("--annotate", type=Path, help="write the frames with boxes drawn to this video")
    s.add_argument("--ca", type=Path, help="trust this CA bundle (PEM) for wss:// instead")
    s.add_argument("--loop", action="store_true", help="play a file or images again at the end")


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
    return v


def _size(text: str) -> tuple[int, int]:
    from edge.client.sources import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JPEG quality from 1 to 100")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "stream":
        return _stream(args)
    if args.command == "bench":
        return _bench(args, argv)
    unknown = list(unknown_variables())
    given = {k: v for k, v in vars(args).items() if k not in ("command", "action", "names")}
    sinks = given.pop("sinks", None)
    try:
        if args.command == "models":
            settings = Settings.from_sources(overrides=given)
        else:
            overrides = {"sinks": None if sinks is None else tuple(sinks)}
            settings = Settings.from_sources(flags=given, overrides=overrides)
            from edge.process.preflight import check

            check(settings)
    except SettingsError as e:
        for line in unknown:  # a misspelt name may be why
            print(f"edge: warning: {line}", file=sys.stderr)
        print(f"edge: bad setting: {e}", file=sys.stderr)
        return 2
    from edge import logs

    logs.setup(settings.log_level, settings.log_format)
    for line in unknown:
        log.warning("%s", line)
    if args.command == "models":
        return _models(args, settings)
    return _serve(settings)


def _stream(args: argparse.Namespace) -> int:
    from edge.client.run import StreamOptions
    from edge.client.run import main as stream

    return stream(
        StreamOptions(
            source=args.source,
            urls=tuple(args.url),
            model=args.model,
            token=args.token,
            fps=args.fps,
            size=args.size,
            quality=args.quality,
            out=args.out,
            annotate=args.annotate,
            ca=args.ca,
            threshold=args.threshold,
            loop=args.loop,
            transport=args.transport,
        )
    )


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from edge.bench.options import from_args

    try:
        settings = Settings.from_sources(overrides={"models": args.repository})
        options = from_args(args, settings.models, argv[1:])
    except (SettingsError, ValueError) as e:
        print(f"edge bench: {e}", file=sys.stderr)
        return 2
    from edge.bench.run import main as bench

    return bench(options)


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from edge.models import pull

    if args.action == "pull":
        names = args.names or list(pull.WEIGHTS)
        try:
            pull.pull(settings.models, [n for n in names if n not in pull.WEIGHTS])
            for i, name in enumerate(names, 1):
                print(f"[{i}/{len(names)}] {name}: fetching", file=sys.stderr)
                (path,) = pull.pull(settings.models, [name])
                size = path.stat().st_size / 1e6
                print(f"[{i}/{len(names)}] {name}: {path} ({size:.1f} MB)", file=sys.stderr)
                print(f"ok {path}")
        except pull.PullError as e:
            print(f"edge: models pull failed: {e}", file=sys.stderr)
            return 1
        return 0
    return _list_models(settings.models, pull.missing_models(settings.models))


def _list_models(root: Path, missing: list[str]) -> int:
    """One line a model (name, versions, whether its weights are intact); a missing
    repository is an error (2), an empty one says so (1): nothing there to serve."""
    if not root.is_dir():
        print(
            f"edge: --models / EDGE_MODELS: no model repository at {root}; "
            "`edge models pull` fills it",
            file=sys.stderr,
        )
        return 2
    found = sorted(p for p in root.iterdir() if (p / "model.toml").is_file())
    if not found:
        print(
            f"edge: no models in {root}; `edge models pull` fetches the defaults", file=sys.stderr
        )
        return 1
    for d in found:
        versions = sorted(v.name for v in d.iterdir() if (v / "model.onnx").exists())
        print(f"{d.name}\t{','.join(versions) or '-'}\t{'missing' if d.name in missing else 'ok'}")
    return 0


def _serve(settings: Settings) -> int:
    from edge.models import pull

    missing = [n for n in pull.missing_models(settings.models) if (settings.models / n).is_dir()]
    if missing:
        print(
            f"edge: model files missing for {', '.join(missing)} in {settings.models}; "
            f"run `edge models pull --models {settings.models}`",
            file=sys.stderr,
        )
        return 2
    n = process_count(settings)
    settings = replace(settings, processes=n)
    if n > 1:
        from edge.process.supervisor import Supervisor

        return Supervisor(settings, n).run()
    from edge.process import eventloop
    from edge.process.serving import serve

    try:
        eventloop.run(serve(settings), settings.uvloop)
    except KeyboardInterrupt:
        pass
    except SettingsError as e:  # a port taken since the check
        print(f"edge: bad setting: {e}", file=sys.stderr)
        return 2
    return 0


def process_count(settings: Settings) -> int:
    """`processes = auto`: one per core on a CPU; on a GPU machine (a GPU provider installed
    and a device present, and the provider setting allowing it) as many as keep the GPU fed,
    4 by the figures in docs/benchmarks.md, never more than the cores."""
    if settings.processes:
        return settings.processes
    cores = os.cpu_count() or 1
    return min(cores, GPU_PROCESSES) if gpu_machine(settings.providers) else cores


#: serving processes that kept one H200 fed from 16 cores (docs/benchmarks.md)
GPU_PROCESSES = 4


def gpu_machine(preference: tuple[str, ...]) -> bool:
    """Whether models here may run on a GPU; decided without loading onnxruntime in the
    supervisor: a GPU build is installed and an NVIDIA device (or a Jetson's) is present."""
    if not {"auto", "cuda", "tensorrt"} & set(preference):
        return False
    try:
        importlib.metadata.distribution("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu"))


if __name__ == "__main__":
    sys.exit(main())
