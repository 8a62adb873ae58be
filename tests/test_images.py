"""The built image, run: the arm64 one under QEMU on an x86 box (`make test-images`, which
builds it first). A container that does not start as the non-root user, fails its own health
check, answers no face, cuts streams on `docker stop` or loses its models with its image
fails here, as does an over-the-air update that switches to a version that is not serving.

One device's life, in order (the tests share it, module-scoped, and each needs the ones
before): version 1 of the image is pushed to a registry on loopback and installed with
deploy/images/ota.sh; it is checked (health, readiness, a face, settings from env), its model
volume gets a new model version (canary, promoted) and a broken one (refused), all without a
restart; then the update to version 2, whose switch drains version 1 with `docker stop`, and
the update to a broken version 3, refused while version 2 serves.

Emulation is slow and its speed varies: every wait is for a condition, with a deadline many
times what it takes on the 2-core box; nothing here asserts a duration. Each step prints what
it saw (`pytest -s`). Skipped without EDGE_TEST_IMAGE (the image's tag) and a Docker engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
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
NAME = "edge-test-ota"  # the device's containers: NAME-a, NAME-b (ota.sh's slots)
VOLUME = "edge-test-ota-models"
PORTS = {"a": 18080, "b": 18090}
#: QEMU user mode (7.2, Debian bookworm's) shows arm64 programs the x86 host's /proc/cpuinfo,
#: and onnxruntime's CPU detection crashes on it (SIGSEGV at import): arm64 containers get an
#: ARM one here. Not needed on an ARM machine, nor where QEMU emulates /proc/cpuinfo itself.
CPUINFO = ROOT / "deploy" / "images" / "qemu-aarch64-cpuinfo"
QEMU_ARGS = [] if platform.machine() == "aarch64" else ["-v", f"{CPUINFO}:/proc/cpuinfo:ro"]

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
    script = (  # as root: /root is closed to the image's user, so its caches would hide
        "uname -m; python -c 'import platform, onnxruntime as o; "
        "print(platform.machine(), o.get_available_providers())'; "
        "echo CA certificates: $(ls /etc/ssl/certs | wc -l); "
        "for c in gcc cc c++ make pip pip3 npm node; do command -v $c; done; "
        "find /root/.cache /root/.npm /var/lib/apt/lists /var/cache/apt/archives -type f "
        "! -name lock 2>/dev/null | head -5; "
        "python -c 'import importlib.util as u; "
        'print([m for m in ("pytest", "hypothesis", "pip") if u.find_spec(m)])\''
    )
    out = docker(
        "run", "--rm", "--user", "0", *QEMU_ARGS, "--entrypoint", "sh", IMAGE, "-c", script
    )
    lines = out.splitlines()
    say(f"inside: {lines}")
    assert lines[0] == "aarch64"
    assert lines[1].startswith("aarch64") and "CPUExecutionProvider" in lines[1]
    assert lines[2].startswith("CA certificates:") and int(lines[2].split()[-1]) > 100
    assert lines[3:] == ["[]"], f"build tools, caches or test packages in the image: {lines[3:]}"


async def test_the_x86_64_image_from_the_same_dockerfile_serves_a_face() -> None:
    """The amd64 build of the same Dockerfile (`make images` builds both) runs natively and
    answers the same face."""
    image = IMAGE.replace("-arm64", "-amd64")
    if image == IMAGE or not docker("images", "-q", image):
        pytest.skip(f"no {image}")
    name = "edge-test-amd64"
    docker("rm", "-f", name, check=False)
    docker("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp",
           "-p", "127.0.0.1::8080", "-e", "EDGE_PROCESSES=1", image)  # fmt: skip
    try:
        port = docker("port", name, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{image} ready", lambda: http_status(url + "/readyz") == 200, START_S)
        arch = docker("exec", name, "python", "-c", "import platform; print(platform.machine())")
        reply = await one_frame(url, face_frame())
        say(f"{image} ({arch}): {reply['model']} {[d['box'] for d in reply['detections']]}")
        assert arch == "x86_64"
        assert_face(reply)
    finally:
        docker("rm", "-f", name, check=False)


# -- one device, updated over the air --------------------------------------------------------------
@dataclass
class Fleet:
    """The registry's three releases and the device's ota.sh settings."""

    v1: str
    v2: str
    v3: str
    env: dict[str, str]


@dataclass
class Device:
    name: str
    url: str


def registry_on_loopback(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's docker-registry on a free loopback port: where the fleet's images come from."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("Debian's docker-registry is not installed (deploy/images/host.sh)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for("registry up", lambda: http_status(f"http://127.0.0.1:{port}/v2/") == 200, 60, 1)
    return proc, f"127.0.0.1:{port}"


def release(tag: str, ref: str, *lines: str) -> str:
    """Push `tag`, or an image built on it with `lines` added, to the registry as `ref`; the
    local name goes again, so the device pulls it."""
    if lines:
        dockerfile = "\n".join([f"FROM {tag}", *lines]) + "\n"
        docker("build", "-q", "-t", ref, "-", stdin=dockerfile)
    else:
        docker("tag", tag, ref)
    docker("push", ref, timeout=1800)
    docker("rmi", ref)
    return ref


def cleanup() -> None:
    for slot in PORTS:
        docker("rm", "-f", f"{NAME}-{slot}", check=False)
    docker("volume", "rm", "-f", VOLUME, check=False)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Versions 1, 2 and 3 in a registry on loopback. 2 is a new release of 1; 3 looks for
    its models in an empty directory, not the volume (a release that moved the path): alive,
    never ready. (A path that does not exist is a bad setting: the server exits, Docker
    restarts it, and ota.sh rejects that too.)"""
    proc, registry = registry_on_loopback(tmp_path_factory.mktemp("registry"))
    repo = f"{registry}/edge-gateway"
    refs = []
    try:
        v1 = release(IMAGE, f"{repo}:1")
        v2 = release(IMAGE, f"{repo}:2", 'LABEL org.opencontainers.image.version="2"')
        broken = ("ENV EDGE_MODELS=/srv/models", "WORKDIR /srv/models", "WORKDIR /tmp")
        v3 = release(IMAGE, f"{repo}:3", 'LABEL org.opencontainers.image.version="3"', *broken)
        refs = [v1, v2, v3]
        say(f"pushed {', '.join(refs)}")
        env = {
            "OTA_NAME": NAME, "OTA_VOLUME": VOLUME, "OTA_PORTS": f"{PORTS['a']} {PORTS['b']}",
            "OTA_FRAME": str(sample_image("astronaut.png")), "OTA_READY_S": str(int(START_S)),
            "OTA_STOP_S": str(DRAIN_S + 40),
            # settings from env: one serving process, no gRPC, hot reload on request only, a
            # frame size limit the hello shows
            "OTA_RUN_ARGS": "-e EDGE_PROCESSES=1 -e EDGE_GRPC_PORT=0 -e EDGE_WATCH_MODELS_S=0 "
            f"-e EDGE_MAX_FRAME_BYTES=3000000 -e EDGE_DRAIN_SECONDS={DRAIN_S} "
            + " ".join(QEMU_ARGS),
        }  # fmt: skip
        yield Fleet(v1, v2, v3, env)
    finally:
        cleanup()
        for ref in refs:
            docker("rmi", ref, check=False)
        proc.terminate()
        proc.wait(30)


def ota(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(OTA), *args], capture_output=True, text=True,
                          env={**os.environ, "DOCKER": DOCKER or "docker", **env},
                          timeout=3 * START_S)  # fmt: skip
    say(f"ota.sh {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def device(fleet: Fleet) -> Iterator[Device]:
    """Version 1 installed as a device runs it: slot a, read-only root, the models volume.
    The volume holds the face detector alone, copied from the image: under QEMU the text
    models' warm-up takes many minutes per start, and a device serves the models its volume
    has (an empty volume would be filled with all of the image's)."""
    cleanup()
    docker("run", "--rm", "--user", "0", *QEMU_ARGS, "-v", f"{VOLUME}:/seed",
           "--entrypoint", "cp", fleet.v1, "-a", "/models/blazeface", "/seed/")  # fmt: skip
    installed = ota("start", fleet.v1, env=fleet.env)
    assert installed.returncode == 0
    yield Device(f"{NAME}-a", f"http://127.0.0.1:{PORTS['a']}")


def test_passes_its_own_health_check_and_serves_readyz(device: Device) -> None:
    def healthy() -> bool:
        state = inspect(device.name, "{{.State.Status}} {{.State.Health.Status}}")
        assert state.split()[0] == "running", docker("logs", "--tail", "30", device.name)
        return state.split()[1] == "healthy"

    wait_for("healthy by the image's HEALTHCHECK", healthy, START_S, every=5)
    assert http_status(device.url + "/readyz") == 200
    uid = docker("exec", device.name, "sh", "-c", "grep ^Uid: /proc/1/status")
    say(f"/readyz 200; PID 1 {uid}; read-only root: "
        f"{inspect(device.name, '{{.HostConfig.ReadonlyRootfs}}')}")  # fmt: skip
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
        ("volume", VOLUME)
    ]
    seeded = docker("exec", device.name, "ls", "/models", "/models/blazeface")
    say(f"volume {VOLUME}, from the image: {seeded.split()}")
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
    # what the delivering agent does on seeing `failed`: a restart would serve it as the newest
    docker("exec", "-u", "0", device.name, "rm", "-r", "/models/blazeface/3")


async def test_update_drains_version_1_switches_to_2_and_never_to_a_broken_3(
    device: Device, fleet: Fleet
) -> None:
    """v2 is pulled, started beside v1, checked (ready, a face) and switched to; `docker stop`
    drains v1 (its stream gets goaway, then close 1001, and it exits 0, not 137: SIGKILL
    cutting the drain). v2 serves the model version the volume got. v3, never ready, is
    rejected and v2 keeps serving."""
    ws_url = device.url.replace("http", "ws", 1) + "/v1/stream"
    sent = 0

    async def camera(ws: aiohttp.ClientWebSocketResponse) -> None:
        """A frame every few seconds, as a slow camera sends, until the server closes."""
        nonlocal sent
        while not ws.closed:
            try:
                await ws.send_bytes(face_frame())
            except (ConnectionError, aiohttp.ClientError):
                return
            sent += 1
            await asyncio.sleep(10)

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        assert (await ws.receive_json(timeout=FRAME_S))["type"] == "hello"
        reader = asyncio.create_task(texts(ws))  # the only reader: replies, pongs, the close
        sender = asyncio.create_task(camera(ws))
        update = await asyncio.to_thread(ota, "update", fleet.v2, env=fleet.env)
        seen = await asyncio.wait_for(reader, FRAME_S)
        await asyncio.wait_for(sender, FRAME_S)
    kinds = Counter(m["type"] if m["type"] != "dropped" else m["reason"] for m in seen)
    say(f"the stream on version 1: {sent} frames sent, replies {dict(kinds)}, last "
        f"{seen[-1] if seen else None}, close {ws.close_code}")  # fmt: skip
    assert update.returncode == 0 and f"switching to {NAME}-b" in update.stdout
    assert seen and seen[-1]["type"] == "goaway" and ws.close_code == 1001
    answered = [s for m in seen for s in m.get("seqs", [m["seq"]] if "seq" in m else [])]
    assert len(answered) == len(set(answered)) and set(answered) <= set(range(sent))
    # every frame answered, but one that crossed the server's close on the wire
    assert len(answered) >= sent - 1, (sent, answered)
    assert kinds["result"] >= 1
    assert re.search(rf"{NAME}-a stopped after \d+ s, exit code 0\b", update.stdout)
    assert docker("ps", "-aq", "--filter", f"name={NAME}-a") == ""
    b = f"http://127.0.0.1:{PORTS['b']}"
    reply = await one_frame(b, face_frame())
    say(f"version 2 answers: {reply['model']} {[d['box'] for d in reply['detections']]}")
    assert_face(reply)
    assert reply["model"] == "blazeface@2", "the volume's model version, not the image's"

    # v3 never becomes ready: wait as long as v2 took, twice over, not the full deadline
    took = int(re.search(rf"{NAME}-b ready after (\d+) s", update.stdout).group(1))
    rejected = ota("update", fleet.v3, env={**fleet.env, "OTA_READY_S": str(2 * took + 60)})
    assert rejected.returncode == 1 and "rejected" in rejected.stdout
    assert "no models found in /srv/models" in rejected.stdout
    status = ota("status", env=fleet.env)
    assert fleet.v2 in status.stdout and f"{NAME}-b" in status.stdout
    assert docker("ps", "-aq", "--filter", f"name={NAME}-a") == ""
    assert_face(await one_frame(b, face_frame()))
