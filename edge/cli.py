"""`edge serve` and `edge models pull|list`: the entry point parses settings once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from edge import __version__
from edge.settings import Settings, SettingsError

log = logging.getLogger("edge")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Real-time inference gateway")
    p.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to bind (EDGE_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (EDGE_PORT, default 8080)")
    serve.add_argument("--models", type=Path, help="model repository (EDGE_MODELS)")
    serve.add_argument("--workers", type=int, help="inference threads (EDGE_WORKERS, 0: cores)")
    serve.add_argument("--max-streams", type=int, dest="max_streams", help="EDGE_MAX_STREAMS")
    serve.add_argument("--max-inflight", type=int, dest="max_inflight", help="EDGE_MAX_INFLIGHT")
    serve.add_argument("--log-level", dest="log_level", help="EDGE_LOG_LEVEL")
    serve.add_argument("--tls-cert", type=Path, dest="tls_cert", help="EDGE_TLS_CERT (PEM)")
    serve.add_argument("--tls-key", type=Path, dest="tls_key", help="EDGE_TLS_KEY (PEM)")
    models = sub.add_parser("models", help="manage the model repository")
    msub = models.add_subparsers(dest="action", required=True)
    pull = msub.add_parser("pull", help="fetch the default models into the repository")
    pull.add_argument("--models", type=Path, help="model repository (EDGE_MODELS)")
    pull.add_argument("names", nargs="*", help="models to fetch (default: all known)")
    ls = msub.add_parser("list", help="show the models in the repository")
    ls.add_argument("--models", type=Path, help="model repository (EDGE_MODELS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "action", "names")}
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


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from edge import pull

    if args.action == "pull":
        try:
            for path in pull.pull(settings.models, args.names or None):
                print(f"ok {path}")
        except pull.PullError as e:
            print(f"edge: models pull failed: {e}", file=sys.stderr)
            return 1
        return 0
    missing = pull.missing_models(settings.models)
    for d in sorted(p for p in settings.models.iterdir() if (p / "model.toml").exists()):
        versions = sorted(v.name for v in d.iterdir() if (v / "model.onnx").exists())
        print(f"{d.name}\t{','.join(versions) or '-'}\t{'missing' if d.name in missing else 'ok'}")
    return 0


def _serve(settings: Settings) -> int:
    from edge import pull

    missing = [n for n in pull.missing_models(settings.models) if (settings.models / n).is_dir()]
    if missing:
        print(
            f"edge: model files missing for {', '.join(missing)} in {settings.models}; "
            f"run `edge models pull --models {settings.models}`",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(_run(settings))
    except KeyboardInterrupt:
        pass
    return 0


async def _run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; then drain (readiness off at once, streams answered and
    told goaway) within the grace period; a second signal exits at once."""
    from aiohttp import web

    from edge.app import create_app, drain
    from edge.appkeys import SERVICES

    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        # aiohttp arms keepalive_timeout when a connection opens and after each response, and
        # partial data does not reset it: a client gets this long to send a complete request
        # head (slow loris). A request being served, and so an open WebSocket, is never cut.
        keepalive_timeout=settings.request_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=_tls(settings))
    await site.start()
    log.info(
        "edge-gateway %s listening on %s:%d, models in %s, %d worker(s)",
        __version__,
        settings.host,
        settings.port,
        settings.models,
        settings.worker_count,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    services = app[SERVICES]
    loop.add_signal_handler(signal.SIGHUP, services.reload.set)
    await stop.wait()
    log.info("signal received: draining for at most %g s", settings.drain_seconds)
    try:
        async with asyncio.timeout(settings.drain_seconds):
            await drain(app)
            await runner.cleanup()
    except TimeoutError:
        log.warning("drain did not finish within %g s; exiting", settings.drain_seconds)


def _tls(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


if __name__ == "__main__":
    sys.exit(main())
