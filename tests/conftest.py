"""Shared fixtures: real models, real photos, the real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from edge.models.pull import pull
from edge.process.app import create_app
from edge.settings import Settings
from edge.tracing import FrameTracer
from tests.imagedata import sample_image

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def pulled() -> Path:
    """The repository's models/ with every default model's weights present."""
    pull(MODELS)
    return MODELS


@pytest.fixture(scope="session")
def face_repo(pulled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with BlazeFace alone (fast to load), copied, not linked."""
    root = tmp_path_factory.mktemp("face-repo")
    shutil.copytree(pulled / "blazeface", root / "blazeface")
    return root


@pytest.fixture(scope="session")
def text_repo(pulled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the PP-OCR text detector alone: a slow model on a CPU (tens
    of milliseconds a frame), for tests whose clients must outpace the model."""
    root = tmp_path_factory.mktemp("text-repo")
    shutil.copytree(pulled / "ppocr_det", root / "ppocr_det")
    return root


#: the tracked model's lost_after_frames (tracked_repo)
TRACKED_LOST_AFTER = 6


@pytest.fixture(scope="session")
def tracked_repo(pulled: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BlazeFace as `faces`, tracked ([tracking], docs/models.md)."""
    root = tmp_path_factory.mktemp("tracked-repo")
    shutil.copytree(pulled / "blazeface", root / "faces")
    toml = root / "faces" / "model.toml"
    tracking = f"\n[tracking]\nenabled = true\nlost_after_frames = {TRACKED_LOST_AFTER}\n"
    toml.write_text(toml.read_text() + tracking)
    return root


def jpeg(name: str, size: tuple[int, int] | None = None, quality: int = 85) -> bytes:
    im = Image.open(sample_image(name)).convert("RGB")
    if size is not None:
        im = im.resize(size)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(name: str) -> bytes:
    buf = io.BytesIO()
    Image.open(sample_image(name)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def face_jpeg() -> bytes:
    return jpeg("astronaut.png")


@pytest.fixture(scope="session")
def noface_jpeg() -> bytes:
    return jpeg("coffee.png")


#: the loop-lag guard (max_loop_lag_ms) is off in the gateways tests start: it refuses new
#: streams while the event loop lags, and on a machine busy with other work every loop lags, so
#: a test that needs a stream would be refused for the machine's load, not for its own doing.
#: The tests of the guard turn it on with the limit they need (test_processes.py).
LOOP_LAG_GUARD_OFF = 0


def settings_for(repo: Path, **overrides: object) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=0,
        grpc_port=0,
        models=repo,
        watch_models_s=0,
        log_format="text",
        max_loop_lag_ms=LOOP_LAG_GUARD_OFF,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    settings: Settings, tracer: FrameTracer | None = None
) -> AsyncIterator[tuple[str, web.Application]]:
    """The real app on a real loopback socket; yields its base URL once /readyz says 200."""
    app = create_app(settings, tracer=tracer)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        yield url, app
    finally:
        await runner.cleanup()


async def wait_ready(url: str, within: float = 60.0) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {within} s")


@pytest.fixture
async def face_server(face_repo: Path) -> AsyncIterator[str]:
    async with running(settings_for(face_repo)) as (url, _):
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """`edge serve` as a separate process, as an operator runs it: one process, or a
    supervisor and its serving processes (`serving()`), counted together."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.serving().values()]

    def serving(self) -> dict[int, int]:
        """The supervisor's serving processes, index -> pid (none when there is one process)."""
        out = {}
        pid = self.proc.pid
        with contextlib.suppress(FileNotFoundError):
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                with contextlib.suppress(FileNotFoundError):
                    argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                    if b"edge.process.serving" in argv:
                        out[int(argv[argv.index(b"edge.process.serving") + 2])] = int(child)
        return out

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids():
            with open(f"/proc/{pid}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
        return total

    def fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.pids())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


@pytest.fixture
def spawn_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    gateways: list[GatewayProcess] = []

    def spawn(
        repo: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> GatewayProcess:
        port = port or free_port()
        log = tmp_path / f"gateway-{port}.log"
        full_env = {
            **os.environ,
            "EDGE_LOG_FORMAT": "json",
            "EDGE_WATCH_MODELS_S": "0",
            "EDGE_GRPC_PORT": "0",  # gRPC off unless a test gives it a free port
            "EDGE_MAX_LOOP_LAG_MS": str(LOOP_LAG_GUARD_OFF),
            **(env or {}),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--models",
                str(repo),
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        gateway = GatewayProcess(proc, f"http://127.0.0.1:{port}", log)
        gateways.append(gateway)
        return gateway

    yield spawn
    for gw in gateways:
        for pid in gw.pids() if gw.proc.poll() is None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        gw.proc.wait(timeout=10)
