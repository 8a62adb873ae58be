"""Configuration checked once at start, and user errors as one line: the real `edge` command
as a subprocess, as a person runs it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from edge.cli import SERVE_FLAGS
from edge.models.pull import WEIGHTS
from edge.settings import Settings, flag, variable
from tests.conftest import ROOT, free_port, jpeg, running, settings_for

#: a start-up that fails its checks does so before any model loads: generous for a busy box
START_S = 120


def edge(*args: str, env: dict[str, str] | None = None, code: str = "") -> tuple[int, str]:
    """Run `edge ARGS` (or, with `code`, that Python first, then the CLI); its exit code and
    stderr."""
    cli = [sys.executable, "-c", f"{code}\nimport sys\nfrom edge.cli import main\n"
           "sys.exit(main(sys.argv[1:]))", *args]  # fmt: skip
    done = subprocess.run(
        cli if code else [sys.executable, "-m", "edge", *args],
        env={**os.environ, "EDGE_LOG_FORMAT": "text", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=START_S,
    )
    return done.returncode, done.stderr.decode()


def holding(reuse_port: bool) -> Iterator[int]:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def held() -> Iterator[int]:
    """A port another gateway holds the way each serving process holds gRPC: SO_REUSEPORT."""
    yield from holding(reuse_port=True)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another program holds plainly."""
    yield from holding(reuse_port=False)


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = ["serve", "--host", "127.0.0.1", "--models", str(tmp_path)]
    return edge(*base, *args, env={"EDGE_GRPC_PORT": "0", **(env or {})})


def one_line(stderr: str, naming: str) -> None:
    assert stderr.count("\n") == 1 and naming in stderr, stderr
    assert stderr.startswith("edge: bad setting: ") and "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    ("args", "env", "naming"),
    [
        ((), {"EDGE_WORKERS": "abc"}, "EDGE_WORKERS"),
        ((), {"EDGE_HEARTBEAT_S": "-5"}, "EDGE_HEARTBEAT_S"),
        (("--processes", "0"), {}, "--processes"),
        (("--workers", "-1"), {}, "--workers"),
        (("--processes", "2", "--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"), {},
         "--tls-cert"),
        (("--models", "/tmp/nonexistent-models"), {}, "--models"),
    ],
)  # fmt: skip
def test_a_bad_setting_stops_the_start_with_one_line(
    args: tuple[str, ...], env: dict[str, str], naming: str, tmp_path: Path
) -> None:
    """Guards against a bad value accepted, reported without its variable or flag, or met
    by a serving process (a traceback each, replaced in a loop): one line, exit 2."""
    rc, stderr = serve(tmp_path, "--port", str(free_port()), *args, env=env)
    assert rc == 2, stderr
    one_line(stderr, naming)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_another_process_holds_is_refused(processes: str, held: int, tmp_path: Path) -> None:
    """Guards against a second gateway sharing a port through SO_REUSEPORT (connections
    split between two gateways), and exit codes that differ by process mode."""
    port = ["--port", str(free_port()), "--processes", processes]
    rc, stderr = serve(tmp_path, *port, env={"EDGE_GRPC_PORT": str(held)})
    assert rc == 2, stderr
    one_line(stderr, "--grpc-port / EDGE_GRPC_PORT")
    rc, stderr = serve(tmp_path, "--port", str(held), "--processes", processes)
    assert rc == 2, stderr
    one_line(stderr, "--port / EDGE_PORT")


def test_a_serving_process_refusing_its_configuration_is_not_replaced(
    taken: int, tmp_path: Path
) -> None:
    """Guards against the supervisor's restart loop: a process that exits at start-up for a
    configuration reason (here a port taken after the check, the check turned off to get
    there) stops the gateway with exit 2, each process started once."""
    base = ["serve", "--host", "127.0.0.1", "--models", str(tmp_path), "--processes", "2"]
    rc, stderr = edge(
        *base,
        "--port",
        str(free_port()),
        env={"EDGE_GRPC_PORT": str(taken), "EDGE_DRAIN_SECONDS": "5"},
        code="import edge.process.preflight as p\np._free = lambda *a: None",
    )
    assert rc == 2, stderr
    assert len(re.findall(r"process \d started", stderr)) == 2, stderr
    assert "replacing it" not in stderr and "Traceback" not in stderr, stderr
    assert "--grpc-port / EDGE_GRPC_PORT" in stderr, stderr


def test_a_misspelt_variable_is_reported_with_the_closest_setting(tmp_path: Path) -> None:
    """Guards against a misspelt variable ignored without a word."""
    rc, stderr = serve(tmp_path, "--processes", "0", env={"EDGE_MAX_STREAM": "5"})
    assert rc == 2
    warning = stderr.splitlines()[0]
    assert "EDGE_MAX_STREAM " in warning and "did you mean EDGE_MAX_STREAMS?" in warning


@pytest.mark.parametrize(
    ("args", "code", "naming"),
    [
        (("models", "list", "--models", "/missing"), "", "--models"),
        (("stream", "x.mp4", "--url", "ws://127.0.0.1:1", "--threshold", "7"), "",
         "--threshold"),
        (("stream", "x.mp4", "--url", "ws://127.0.0.1:1", "--annotate", "/no/dir/a.mp4"), "",
         "/no/dir/a.mp4"),
        (("stream", "x.mp4", "--url", "ws://127.0.0.1:1", "--transport", "webrtc"),
         "import sys\nsys.modules['aiortc'] = None", "edge-gateway[webrtc]"),
        (("stream", "x.mp4", "--url", "ws://127.0.0.1:1", "--quality", "0"), "", "--quality"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_before_anything_starts(
    args: tuple[str, ...], code: str, naming: str
) -> None:
    """Guards against tracebacks (FileNotFoundError, ModuleNotFoundError) and against bad
    option values found only after connecting: one line naming the cause, exit 2."""
    rc, stderr = edge(*args, code=code)
    assert rc == 2, stderr
    assert stderr.count("\n") == 1 and naming in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.integration
async def test_a_closed_output_pipe_ends_the_stream_quietly(
    face_repo: Path, tmp_path: Path
) -> None:
    """Guards against a BrokenPipeError traceback from `edge stream ... --out - | head -3`."""
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg("astronaut.png"))
    async with running(settings_for(face_repo)) as (url, _):
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "edge", "stream", str(tmp_path / "*.jpg"), "--loop"),
            *("--url", url.replace("http", "ws"), "--out", "-"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        for _ in range(3):  # what `head -3` reads before it exits
            await asyncio.wait_for(proc.stdout.readline(), START_S)
        proc.stdout.feed_eof()
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()
        stderr = await asyncio.wait_for(proc.stderr.read(), START_S)
        rc = await proc.wait()
    assert rc == 0 and stderr == b"", stderr.decode()


def test_serve_help_explains_every_flag_from_the_settings() -> None:
    """Guards against flags explained only by a variable's name, and help that drifts from
    the settings: each flag's text names its variable and its default, read from Settings;
    every command has a description; the flags are those docs/settings.md lists."""
    out = subprocess.run(
        [sys.executable, "-m", "edge", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = " ".join(out.split())
    defaults = {f.name: f.default for f in fields(Settings)}
    for name in SERVE_FLAGS:
        found = re.search(rf" {flag(name)} [A-Z_]+ (.*?)(?= --[a-z-]+ [A-Z_]{(3,)} |$)", text)
        assert found, name
        line = found.group(1)
        assert f"({variable(name)}; default: " in line, line
        shown = defaults[name]
        if isinstance(shown, int) and name != "processes":
            assert f"default: {shown})" in line, line
    docs = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^\| (\w+) \| `EDGE_\w+` \| `--", docs, re.M))
    assert documented == set(SERVE_FLAGS)
    for command in (["serve"], ["models"], ["models", "pull"], ["stream"], ["bench"]):
        text = subprocess.run(
            [sys.executable, "-m", "edge", *command, "--help"], capture_output=True, text=True
        ).stdout
        usage, description = text.split("\n\n")[:2]
        assert not description.startswith(("options:", "positional")), command


def test_models_pull_shows_progress_per_file(pulled: Path, tmp_path: Path) -> None:
    """Guards against a silent `edge models pull`: a line per model with its size on stderr,
    and `ok PATH` on stdout for scripts (weights already present: nothing is fetched)."""
    repo = tmp_path / "repo"
    shutil.copytree(pulled, repo)
    done = subprocess.run(
        [sys.executable, "-m", "edge", "models", "pull", "--models", str(repo)],
        capture_output=True,
        text=True,
        timeout=START_S,
        env={**os.environ, "EDGE_LOG_LEVEL": "warning"},
    )
    assert done.returncode == 0, done.stderr
    n = len(WEIGHTS)
    assert re.search(rf"^\[1/{n}\] blazeface: .*model\.onnx \(\d+\.\d MB\)$", done.stderr, re.M)
    assert done.stdout.count("ok ") == n, done.stdout


@pytest.mark.integration
async def test_stream_exits_non_zero_when_the_gateway_refuses_its_settings(
    tmp_path: Path,
) -> None:
    """Guards against the gateway's answer to the stream's settings printed as one more
    output line with exit 0 and `errors: 0`: a gateway (here an older one, refusing the
    threshold the client accepts) that answers the config message with an error ends the
    command with one line and exit 5."""
    from aiohttp import web

    from edge.client.connection import SUBPROTOCOL

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,))
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "protocol": 1, "session": "s", "model": "m@1"})
        await ws.receive()  # the config message
        await ws.send_json({"type": "error", "code": "bad_message", "message": "no threshold"})
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    (tmp_path / "0.jpg").write_bytes(jpeg("astronaut.png"))
    try:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "edge", "stream", str(tmp_path / "*.jpg"), "--loop"),
            *("--url", f"ws://127.0.0.1:{port}", "--threshold", "0.5"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), START_S)
    finally:
        await runner.cleanup()
    assert proc.returncode == 5, stderr.decode()
    assert stderr.decode().count("\n") == 1 and b"no threshold" in stderr
