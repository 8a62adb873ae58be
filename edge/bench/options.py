"""`edge bench`'s command line: its arguments (added to the `edge` parser by edge/cli.py)
and the options they make. Nothing heavy is imported here: `edge serve` builds this parser
too."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
from dataclasses import dataclass
from pathlib import Path

#: the transports benchmarked when --transports is not given (`websocket-credits`: the
#: WebSocket driven by a client that follows credits, edge/bench/creditlink.py)
DEFAULT_TRANSPORTS = ("websocket", "websocket-credits", "webrtc", "grpc")
#: the module each transport's client needs
NEEDS = {"webrtc": "aiortc", "grpc": "grpc"}


@dataclass(frozen=True)
class Options:
    models: tuple[str, ...]
    transports: tuple[str, ...]
    repository: Path
    out: Path
    command: str
    url: str | None = None
    grpc: str | None = None  # host:port of the gRPC service of the gateway at `url`
    quick: bool = False
    force: bool = False
    max_drift: float = 0.15
    #: the picture each model's clients send: (model, path) pairs, model "" for every model
    images: tuple[tuple[str, Path], ...] = ()
    size: tuple[int, int] = (640, 480)
    processes: str = "auto"
    providers: str = "cpu"
    clients: int = 1
    seconds: float | None = None
    streams: int | None = None

    def image_for(self, model: str) -> Path | None:
        mine = dict(self.images)
        return mine.get(model, mine.get(""))


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        help="models to measure, comma-separated (default: every model in the repository "
        "with its weights)",
    )
    p.add_argument(
        "--transports",
        help="websocket, websocket-credits (a client that follows credits), webrtc, grpc, "
        "comma-separated (default: all four, those whose client libraries are installed)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-report"),
        help="folder for benchmarks.md and its charts (default: bench-report)",
    )
    p.add_argument("--url", help="measure this running gateway instead of starting one")
    p.add_argument(
        "--grpc", help="with --url: its gRPC service's HOST:PORT (default: --url's host, 8081)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="runs of about a second: checks the bench itself, measures nothing",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="measure even when the machine is too busy (the report says so)",
    )
    p.add_argument(
        "--max-drift",
        type=float,
        default=0.15,
        dest="max_drift",
        help="how far (0.15: 15%%) the ceiling may move between its measurements before the "
        "machine counts as too busy to measure",
    )
    p.add_argument("--repository", type=Path, help="model repository (EDGE_MODELS)")
    p.add_argument(
        "--image",
        help="picture the clients send: a file, or MODEL=FILE,... per model (default: a drawn "
        "test card)",
    )
    p.add_argument("--size", default="640x480", help="frame size WxH (default 640x480)")
    p.add_argument("--processes", default="auto", help="the gateway's serving processes")
    p.add_argument("--providers", default="cpu", help="execution providers, e.g. cuda,cpu")
    p.add_argument("--clients", type=int, default=1, help="client processes driving the streams")
    p.add_argument("--seconds", type=float, help="length of each load run")
    p.add_argument("--streams", type=int, help="streams in each load run")


def from_args(args: argparse.Namespace, repository: Path, argv: list[str]) -> Options:
    """Options from parsed arguments; ValueError with a one-line reason when they are bad."""
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {args.size!r}: give WIDTHxHEIGHT, e.g. 640x480") from None
    if args.models:
        models = tuple(_listed(args.models))
    else:
        models = tuple(sorted(d.parent.parent.name for d in repository.glob("*/*/model.onnx")))
        models = tuple(dict.fromkeys(models))
    if not models:
        raise ValueError(f"no models with weights in {repository}; run `edge models pull`")
    if args.transports:
        transports = tuple(_listed(args.transports))
    else:
        transports = tuple(
            t for t in DEFAULT_TRANSPORTS if t not in NEEDS or importlib.util.find_spec(NEEDS[t])
        )
    images = tuple(
        (model.strip(), Path(path)) if sep else ("", Path(model))
        for model, sep, path in (part.rpartition("=") for part in _listed(args.image or ""))
    )
    for _, path in images:
        if not path.is_file():
            raise ValueError(f"--image: no such file {path}")
    if not 0 <= args.max_drift < 1:
        raise ValueError("--max-drift: a fraction between 0 and 1, e.g. 0.15")
    return Options(
        models=models,
        transports=transports,
        repository=repository,
        out=args.out,
        command="edge bench " + shlex.join(argv),
        url=args.url,
        grpc=args.grpc,
        quick=args.quick,
        force=args.force,
        max_drift=args.max_drift,
        images=images,
        size=(w, h),
        processes=args.processes,
        providers=args.providers,
        clients=args.clients,
        seconds=args.seconds,
        streams=args.streams,
    )


def _listed(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
