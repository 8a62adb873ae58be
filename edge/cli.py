"""`edge serve`, `edge models pull|list`, `edge stream` and `edge bench`: the entry point
parses settings once (`edge stream` is a client of a gateway and takes none; edge.client.run
does its work; edge.bench does `edge bench`'s)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from edge import __version__
from edge.settings import Settings, SettingsError

log = logging.getLogger("edge")

#: the `models` commands' --models help: where the repository is when none is named
_REPOSITORY = (
    "model repository (EDGE_MODELS; default $XDG_DATA_HOME/edge-gateway/models, "
    "i.e. ~/.local/share/edge-gateway/models)"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Real-time inference gateway")
    p.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (EDGE_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (EDGE_PORT, default 8080)")
    serve.add_argument(
        "--grpc-port",
        type=int,
        dest="grpc_port",
        help="gRPC port (EDGE_GRPC_PORT, default 8081; 0: no gRPC)",
    )
    serve.add_argument("--models", type=Path, help="model repository (EDGE_MODELS)")
    serve.add_argument(
        "--processes",
        type=_processes,
        help="serving processes behind the port (EDGE_PROCESSES, default auto; 1: no supervisor)",
    )
    serve.add_argument(
        "--workers", type=int, help="inference threads per process (EDGE_WORKERS, 0: auto)"
    )
    serve.add_argument("--max-streams", type=int, dest="max_streams", help="EDGE_MAX_STREAMS")
    serve.add_argument("--max-inflight", type=int, dest="max_inflight", help="EDGE_MAX_INFLIGHT")
    serve.add_argument("--log-level", dest="log_level", help="EDGE_LOG_LEVEL")
    serve.add_argument(
        "--sink",
        action="append",
        dest="sinks",
        metavar="URL",
        help="publish results to this broker (EDGE_SINKS; repeat for several; docs/sinks.md)",
    )
    serve.add_argument("--tls-cert", type=Path, dest="tls_cert", help="EDGE_TLS_CERT (PEM)")
    serve.add_argument("--tls-key", type=Path, dest="tls_key", help="EDGE_TLS_KEY (PEM)")
    models = sub.add_parser("models", help="manage the model repository")
    msub = models.add_subparsers(dest="action", required=True)
    pull = msub.add_parser("pull", help="fetch the default models into the repository")
    pull.add_argument("--models", type=Path, help=_REPOSITORY)
    pull.add_argument("names", nargs="*", help="models to fetch (default: all known)")
    ls = msub.add_parser("list", help="show the models in the repository")
    ls.add_argument("--models", type=Path, help=_REPOSITORY)
    _stream_parser(sub)
    from edge.bench.options import arguments

    arguments(sub.add_parser("bench", help="measure the gateway on this machine, as a report"))
    return p


def _stream_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "stream",
        help="stream a camera, video file, RTSP/HTTP URL or images to a gateway",
        description="Stream frames to a gateway and write one JSON line per reply "
        "(docs/client.md).",
    )
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


def _processes(text: str) -> int:
    if text.strip().lower() == "auto":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of processes, or auto") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "stream":
        return _stream(args)
    if args.command == "bench":
        return _bench(args, argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "action", "names")}
    if overrides.get("sinks") is not None:
        overrides["sinks"] = tuple(overrides["sinks"])
    try:
        settings = Settings.from_sources(overrides=overrides)
    except SettingsError as e:
        print(f"edge: bad setting: {e}", file=sys.stderr)
        return 2
    from edge import logs

    logs.setup(settings.log_level, settings.log_format)
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
        try:
            for path in pull.pull(settings.models, args.names or None):
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
        print(f"edge: no model repository at {root}; `edge models pull` fills it", file=sys.stderr)
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
    from edge.process.serving import serve

    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
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
