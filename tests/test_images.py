"""The built image, run: the arm64 one under QEMU on an x86 box (`make test-images`, which
builds it first). A container that does not start as the non-root user, fails its own health
check, answers no face, cuts streams on `docker stop` or loses its models with its image
fails here, as does an over-the-air update that switches to a version that is not serving.

Emulation is slow and its speed varies: every wait is for a condition, with a deadline many
times what it takes on the 2-core box; nothing here asserts a duration. Each step prints what
it saw (`pytest -s`). Skipped without EDGE_TEST_IMAGE (the image's tag) and a Docker engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.imagedata import sample_image

IMAGE = os.environ.get("EDGE_TEST_IMAGE", "")
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
ROOT = Path(__file__).resolve().parents[1]
OTA = ROOT / "deploy" / "images" / "ota.sh"
#: the astronaut's face in astronaut.png (tests/test_blazeface.py)
FACE = [179, 82, 273, 176]
#: waits for a container: its start under QEMU (imports, three models loaded and warmed) takes
#: minutes; a stuck one fails after these
START_S = 1200.0
FRAME_S = 120.0
DRAIN_S = 20  # EDGE_DRAIN_SECONDS in the containers started here

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(not IMAGE or DOCKER is None, reason="builds images first: make test-images"),
]

T = TypeVar("T")


def say(what: str) -> None:
    print(f"\nimages: {what}", flush=True)


def docker(*args: str, check: bool = True, timeout: float = 600, stdin: str | None = None) -> str:
    proc = subprocess.run([DOCKER or "docker", *args], capture_output=True, text=True,
                          timeout=timeout, input=stdin)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
    return proc.stdout.strip()


def wait_for(what: str, probe: Callable[[], T | None], within: float, every: float = 2.0) -> T:
    start = time.monotonic()
    while True:
        value = probe()
        if value:
            say(f"{what}: after {time.monotonic() - start:.0f} s")
            return value
        if time.monotonic() - start > within:
            raise AssertionError(f"not {what} within {within:.0f} s")
        time.sleep(every)


def inspect(name: str, template: str) -> str:
    return docker("inspect", "--format", template, name, check=False)


def http_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def face_frame() -> bytes:
    return sample_image("astronaut.png").read_bytes()


async def one_frame(base: str, frame: bytes, model: str | None = None) -> dict[str, Any]:
    """Open a stream, send one frame, return the reply for it (and the hello)."""
    url = base.replace("http", "ws", 1) + "/v1/stream" + (f"?model={model}" if model else "")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=FRAME_S)
        assert hello["type"] == "hello", hello
        await ws.send_bytes(frame)
        while True:
            reply = await ws.receive_json(timeout=FRAME_S)
            if reply.get("seq") == 0:
                return {**reply, "hello": hello}


async def texts(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every text message until the server closes the socket."""
    return [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]


def assert_face(reply: dict[str, Any]) -> None:
    assert reply["type"] == "result", reply
    boxes = [d["box"] for d in reply["detections"]]
    assert len(boxes) == 1, reply
    assert boxes[0] == pytest.approx(FACE, abs=6), reply


def models(base: str) -> dict[str, str]:
    """name@version -> state, from GET /v1/models."""
    import urllib.request

    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        listing = json.load(r)["models"]
    return {f"{m['name']}@{m['version']}": m["state"] for m in listing}


# -- the image itself --------------------------------------------------------------------------
def test_image_is_arm64_non_root_with_a_health_check_and_nothing_to_build_with() -> None:
    """The image a device pulls: arm64, uid 10001, its own HEALTHCHECK, and none of what built
    it (compilers, pip, npm, caches, apt lists, test dependencies)."""
    config = json.loads(docker("image", "inspect", IMAGE))[0]
    say(f"{IMAGE}: {config['Architecture']}, user {config['Config']['User']}, "
        f"{config['Size'] / 1e6:.0f} MB, labels {config['Config']['Labels']}")  # fmt: skip
    assert config["Architecture"] == "arm64" and config["Os"] == "linux"
    assert config["Config"]["User"] == "10001:10001"
    assert "/healthz" in " ".join(config["Config"]["Healthcheck"]["Test"])
    assert config["Config"]["Labels"]["org.opencontainers.image.version"]
    script = (
        "id -u; uname -m; python -c 'import platform, onnxruntime as o; "
        "print(platform.machine(), o.get_available_providers())'; "
        "for c in gcc cc c++ make pip pip3 npm node; do command -v $c; done; "
        "ls -A /root/.cache /root/.npm /var/lib/apt/lists 2>/dev/null; "
        "python -c 'import importlib.util as u; "
        'print([m for m in ("pytest", "hypothesis", "pip") if u.find_spec(m)])\''
    )
    out = docker("run", "--rm", "--entrypoint", "sh", IMAGE, "-c", script).splitlines()
    say(f"inside: {out}")
    assert out[0] == "10001" and out[1] == "aarch64"
    assert out[2].startswith("aarch64") and "CPUExecutionProvider" in out[2]
    assert out[3:] == ["[]"], f"build tools, caches or test packages in the image: {out[3:]}"


# -- one device ----------------------------------------------------------------------------------
@dataclass
class Device:
    name: str
    volume: str
    url: str


@pytest.fixture(scope="module")
def device() -> Iterator[Device]:
    """The image as a device runs it: read-only root, a models volume, settings from env."""
    name, volume = "edge-test-device", "edge-test-models"
    docker("rm", "-f", name, check=False)
    docker("volume", "rm", "-f", volume, check=False)
    docker("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "--stop-timeout", str(DRAIN_S + 40), "-v", f"{volume}:/models",
           "-p", "127.0.0.1::8080", "-e", "EDGE_PROCESSES=1", "-e", "EDGE_GRPC_PORT=0",
           "-e", "EDGE_MAX_FRAME_BYTES=3000000", "-e", "EDGE_WATCH_MODELS_S=0",
           "-e", f"EDGE_DRAIN_SECONDS={DRAIN_S}", IMAGE)  # fmt: skip
    port = docker("port", name, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
    say(f"started {name} from {IMAGE} on 127.0.0.1:{port}, volume {volume} on /models")
    try:
        yield Device(name, volume, f"http://127.0.0.1:{port}")
    finally:
        say("last lines of its log:\n" + docker("logs", "--tail", "8", name, check=False))
        docker("rm", "-f", name, check=False)
        docker("volume", "rm", "-f", volume, check=False)


def test_passes_its_own_health_check_and_serves_readyz(device: Device) -> None:
    def healthy() -> bool:
        state = inspect(device.name, "{{.State.Status}} {{.State.Health.Status}}")
        assert state.split()[0] == "running", docker("logs", "--tail", "30", device.name)
        return state.split()[1] == "healthy"

    wait_for("healthy by the image's HEALTHCHECK", healthy, START_S, every=5)
    wait_for("/readyz 200", lambda: http_status(device.url + "/readyz") == 200, START_S, 5)
    uid = docker("exec", device.name, "sh", "-c", "grep ^Uid: /proc/1/status")
    say(f"PID 1: {uid}")
    assert uid.split()[1:] == ["10001"] * 4


async def test_answers_a_face_frame_with_the_right_box_and_env_settings(device: Device) -> None:
    """EDGE_MAX_FRAME_BYTES from `docker run -e` reaches the hello: settings come from env."""
    reply = await one_frame(device.url, face_frame())
    say(f"face frame: {reply['model']} {[d['box'] for d in reply['detections']]} "
        f"timing {reply['timing']}; hello {reply['hello']}")  # fmt: skip
    assert_face(reply)
    assert reply["hello"]["max_frame_bytes"] == 3_000_000


async def test_models_live_on_the_volume_and_reload_without_a_restart(device: Device) -> None:
    """A version dropped into the volume (dot-name, then rename) is loaded by the running
    container, tried as a canary and promoted; a broken one fails to load and the promoted
    one keeps serving. No image change, no restart."""
    mounts = json.loads(inspect(device.name, "{{json .Mounts}}"))
    assert [(m["Type"], m["Name"]) for m in mounts if m["Destination"] == "/models"] == [
        ("volume", device.volume)
    ]
    seeded = docker("exec", device.name, "ls", "/models/blazeface")
    say(f"volume {device.volume} seeded from the image: blazeface/{seeded.split()}")
    started = inspect(device.name, "{{.State.StartedAt}}")

    def drop(version: int, source: str) -> None:
        incoming = f"/models/blazeface/.incoming-{version}"
        script = f"mkdir {incoming} && {source} && mv {incoming} /models/blazeface/{version}"
        docker("exec", "-u", "0", device.name, "sh", "-c", script)

    async def load(body: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as http:
            url = device.url + "/v1/models/blazeface/load"
            async with http.post(url, json=body, timeout=aiohttp.ClientTimeout(START_S)) as r:
                assert r.status == 200, await r.text()
                return await r.json()

    drop(2, "cp /models/blazeface/1/model.onnx /models/blazeface/.incoming-2/")
    quick = {"share": 1.0, "frames": 8, "min_streams": 1, "min_clients": 1,
             "min_seconds": 0, "max_latency_ratio": 10.0}  # fmt: skip
    say(f"blazeface/2 dropped into the volume; load: {await load({'canary': quick})}")
    served: list[str] = []
    start = time.monotonic()
    while models(device.url).get("blazeface@2") not in ("promoted", "rolled_back"):
        assert time.monotonic() - start < START_S, models(device.url)
        reply = await one_frame(device.url, face_frame())
        assert_face(reply)
        served.append(reply["model"])
    say(f"canary: {models(device.url)}; frames answered by {sorted(set(served))}")
    assert models(device.url)["blazeface@2"] == "promoted"

    drop(3, "head -c 4096 /dev/urandom > /models/blazeface/.incoming-3/model.onnx")
    say(f"broken blazeface/3 dropped; load: {await load({})}")
    wait_for("blazeface@3 failed", lambda: models(device.url).get("blazeface@3") == "failed",
             START_S)  # fmt: skip
    reply = await one_frame(device.url, face_frame())
    say(f"after the broken drop: {models(device.url)}; a frame answered by {reply['model']}")
    assert_face(reply)
    assert reply["model"] == "blazeface@2"
    assert inspect(device.name, "{{.State.StartedAt}}") == started, "the container restarted"


async def test_docker_stop_drains_with_goaway_to_a_connected_stream(device: Device) -> None:
    """SIGTERM from `docker stop`: the stream gets goaway and close 1001, the server exits 0
    within the grace period (137 would be Docker's SIGKILL cutting the drain)."""
    url = device.url.replace("http", "ws", 1) + "/v1/stream"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=FRAME_S))["type"] == "hello"
        await ws.send_bytes(face_frame())
        first = await ws.receive_json(timeout=FRAME_S)
        assert first["type"] == "result", first
        stop = await asyncio.create_subprocess_exec(DOCKER or "docker", "stop", device.name)
        seen = await texts(ws)
        code = ws.close_code
        await asyncio.wait_for(stop.wait(), DRAIN_S + 120)
    exit_code = inspect(device.name, "{{.State.ExitCode}}")
    say(f"docker stop: the stream saw {seen}, close {code}; container exit code {exit_code}")
    assert [m["type"] for m in seen] == ["goaway"] and code == 1001
    assert exit_code == "0"
    logs = docker("logs", "--tail", "40", device.name, check=False)
    assert "drain" in logs.lower(), logs


# -- over the air ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on a loopback port: where the fleet's images come from."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("Debian's docker-registry is not installed (deploy/images/host.sh)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path_factory.mktemp("registry")
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for("registry up", lambda: http_status(f"http://127.0.0.1:{port}/v2/") == 200, 60, 1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def ota(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(OTA), *args], capture_output=True, text=True,
                          env={**os.environ, "DOCKER": DOCKER or "docker", **env},
                          timeout=3 * START_S)  # fmt: skip
    say(f"ota.sh {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def push(source: str, ref: str, registry: str) -> str:
    docker("tag", source, ref)
    docker("push", ref, timeout=1800)
    docker("rmi", ref)  # the device pulls it
    return ref


async def test_ota_update_switches_to_a_good_version_and_never_to_a_broken_one(
    registry: str, tmp_path: Path
) -> None:
    """v1 from the registry serves; v2 is pulled, started beside it, checked (ready, a face)
    and switched to, v1 drained (its stream gets goaway); v3, which never becomes ready, is
    rejected and v2 keeps serving."""
    repo = f"{registry}/edge-gateway"
    env = {"OTA_NAME": "edge-test-ota", "OTA_VOLUME": "edge-test-ota-models",
           "OTA_PORTS": "18080 18090", "OTA_FRAME": str(sample_image("astronaut.png")),
           "OTA_READY_S": str(int(START_S)), "OTA_STOP_S": str(DRAIN_S + 40),
           "OTA_RUN_ARGS": "-e EDGE_PROCESSES=1 -e EDGE_GRPC_PORT=0 "
                           f"-e EDGE_DRAIN_SECONDS={DRAIN_S}"}  # fmt: skip
    for slot in ("a", "b"):
        docker("rm", "-f", f"edge-test-ota-{slot}", check=False)
    docker("volume", "rm", "-f", "edge-test-ota-models", check=False)

    # v2 and v3: new releases built on v1; v3 looks for its models where the volume is not
    # (a release that moved the path), so it is alive but never ready
    def derive(version: str, *lines: str) -> str:
        tag = f"edge-test-ota:{version}"
        dockerfile = "\n".join(
            [f"FROM {IMAGE}", f'LABEL org.opencontainers.image.version="{version}"', *lines]
        )
        docker("build", "-q", "-t", tag, "-", stdin=dockerfile + "\n")
        return tag

    v1 = push(IMAGE, f"{repo}:1", registry)
    v2 = push(derive("2"), f"{repo}:2", registry)
    v3 = push(derive("3-broken", "ENV EDGE_MODELS=/srv/models"), f"{repo}:3", registry)
    say(f"pushed {v1}, {v2}, {v3}")
    try:
        started = time.monotonic()
        assert ota("start", v1, env=env).returncode == 0
        a = "http://127.0.0.1:18080"
        assert_face(await one_frame(a, face_frame()))

        # a client on v1 while the update runs: the switch drains it with goaway
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(a.replace("http", "ws") + "/v1/stream") as ws,
        ):
            assert (await ws.receive_json(timeout=FRAME_S))["type"] == "hello"
            ready_before = time.monotonic() - started
            reader = asyncio.create_task(texts(ws))  # read while the update runs: pongs too
            update = await asyncio.to_thread(ota, "update", v2, env=env)
            seen = await asyncio.wait_for(reader, FRAME_S)
            say(f"the stream on v1 saw {seen}, close {ws.close_code}")
        assert update.returncode == 0 and "switching to edge-test-ota-b" in update.stdout
        assert [m["type"] for m in seen] == ["goaway"] and ws.close_code == 1001
        b = "http://127.0.0.1:18090"
        reply = await one_frame(b, face_frame())
        assert_face(reply)
        assert docker("ps", "-q", "--filter", "name=edge-test-ota-a") == ""

        env["OTA_READY_S"] = str(int(max(3 * ready_before, 180)))  # v3 will never be ready
        rejected = ota("update", v3, env=env)
        assert rejected.returncode == 1 and "rejected" in rejected.stdout
        assert "no models found in /srv/models" in rejected.stdout
        status = ota("status", env=env)
        assert f"{repo}:2" in status.stdout and "edge-test-ota-b" in status.stdout
        assert_face(await one_frame(b, face_frame()))
        assert docker("ps", "-aq", "--filter", "name=edge-test-ota-a") == ""
    finally:
        for slot in ("a", "b"):
            docker("rm", "-f", f"edge-test-ota-{slot}", check=False)
        docker("volume", "rm", "-f", "edge-test-ota-models", check=False)
        for ref in ("edge-test-ota:2", "edge-test-ota:3-broken", v1, v2, v3):
            docker("rmi", ref, check=False)
