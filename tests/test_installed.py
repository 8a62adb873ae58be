"""The wheel is the product: built from this checkout, installed in a fresh venv outside it,
`edge models pull` and `edge serve` run from a temporary directory serve the dashboard and
find faces, with nothing taken from the checkout.

Guards against a wheel without the dashboard or the default models' model.toml (`/` a 404,
`/readyz` saying "model.toml: missing"), against `edge models pull` writing into
site-packages, against an installed gateway that works only when started from the repository,
against `edge models list` saying nothing about a missing repository, and against setuptools'
warnings (the license as a table, data folders installed as packages) coming back.

No downloads: the wheel is built with this venv's setuptools (no build isolation), the new venv
sees this venv's third-party packages through a .pth file (added after the wheel is installed,
so pip never meets the editable install), and the weights are copied from the checkout's pulled
models/ into the default data directory, where `edge models pull` finds them intact and seeds
each model's model.toml from the installed package.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge.models.pull import WEIGHTS
from tests.conftest import ROOT, free_port, wait_ready
from tests.pace import margin
from tests.wsclient import next_reply, open_stream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A venv with the wheel built from this checkout installed, and the environment a new
    user's shell would give it: its own HOME, no EDGE_* variable, no PYTHONPATH."""
    tmp = tmp_path_factory.mktemp("installed")
    leftovers = [p for p in (ROOT / "build", ROOT / "edge_gateway.egg-info") if not p.exists()]
    build = _run(
        sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
        "--no-index", "--wheel-dir", tmp / "dist", ROOT,
        cwd=tmp, env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:] + build.stdout[-3000:]
    warned = [ln for ln in build.stdout.splitlines() if "SetuptoolsDeprecationWarning" in ln
              or "SetuptoolsWarning" in ln or "_IncludePackageDataAbuse" in ln]  # fmt: skip
    assert not warned, warned
    (wheel,) = (tmp / "dist").glob("edge_gateway-*.whl")
    # without PYTHONPATH: the checkout (and the egg-info the build left there) out of sight
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "PYTHON", "XDG_"))}
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir()
    venv = tmp / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp, env=env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    got = _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "--disable-pip-version-check", wheel, cwd=tmp, env=env,
    )  # fmt: skip
    assert got.returncode == 0 and "Successfully installed" in got.stdout, got.stdout + got.stderr
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
        cwd=tmp, env=env,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    yield venv, env
    for path in leftovers:  # what the build left in the checkout, and was not there before
        shutil.rmtree(path, ignore_errors=True)


def test_wheel_installed_outside_the_checkout_serves_dashboard_and_faces(
    installed: tuple[Path, dict[str, str]],
    pulled: Path,
    face_jpeg: bytes,
    tmp_path: Path,
) -> None:
    """The whole first run of a new user: pip install, `edge models pull`, `edge serve`."""
    venv, env = installed
    edge = venv / "bin" / "edge"
    where = _run(venv / "bin" / "python", "-c", "import edge; print(edge.__file__)",
                 cwd=tmp_path, env=env)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv), (where.stdout, where.stderr)

    data = Path(env["HOME"]) / ".local" / "share" / "edge-gateway" / "models"
    listed = _run(edge, "models", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 2 and not listed.stdout, listed
    assert listed.stderr.count("\n") == 1 and str(data) in listed.stderr, listed.stderr

    for weights in WEIGHTS.values():  # what `edge models pull` would download
        weights.path(data).parent.mkdir(parents=True)
        for (here, _, _), (there, _, _) in zip(
            weights.files(pulled), weights.files(data), strict=True
        ):
            shutil.copy(here, there)
    pulled_here = _run(edge, "models", "pull", cwd=tmp_path, env=env)
    assert pulled_here.returncode == 0, pulled_here.stderr
    for name in WEIGHTS:
        shipped = ROOT / "edge" / "models" / "defaults" / name / "model.toml"
        assert (data / name / "model.toml").read_bytes() == shipped.read_bytes()
    assert not list(venv.rglob("model.onnx")), "models pull wrote into the venv"
    listed = _run(edge, "models", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and listed.stdout.count("\tok") == len(WEIGHTS), listed

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    serve = [edge, "serve", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
             "--processes", "1"]  # fmt: skip
    proc = subprocess.Popen(serve, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_dashboard_and_a_face(url, face_jpeg))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


async def _dashboard_and_a_face(url: str, face_jpeg: bytes) -> None:
    await wait_ready(url, within=60 + 10 * margin())
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/") as r:
            assert r.status == 200 and "/web/app.js" in await r.text()
        async with http.get(url + "/web/app.js") as r:
            assert r.status == 200
        async with http.get(url + "/readyz") as r:
            assert r.status == 200, await r.text()
        ws, _ = await open_stream(http, url, "blazeface")
        await ws.send_bytes(face_jpeg)
        reply = await next_reply(ws)
        assert reply["type"] == "result" and len(reply["detections"]) == 1, reply
        assert reply["detections"][0]["label"] == "face"
        await ws.close()
