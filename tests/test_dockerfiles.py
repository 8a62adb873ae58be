"""The Dockerfiles as `make images` builds them, read without a Docker engine: one Dockerfile
for arm64 and x86-64 on a base given as an argument, labels that name that base, a runtime
stage without build tools, and the Jetson file's stages that need no NVIDIA image. The images
themselves, built and run: tests/test_images.py (`make test-images`)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_util import DOCKERFILES, JETSON, ROOT, dockerfile, dockerfile_env, final_stage

pytestmark = pytest.mark.unit


def stages(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Each stage's instructions (comments out), by stage name."""
    out: dict[str, list[dict[str, Any]]] = {}
    name = ""
    for i in dockerfile(path).structure:
        if i["instruction"] == "FROM":
            name = i["value"].split()[-1]
        if i["instruction"] != "COMMENT" and name:
            out.setdefault(name, []).append(i)
    return out


def global_args(path: Path) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    out = {}
    for i in dockerfile(path).structure:
        if i["instruction"] == "FROM":
            break
        if i["instruction"] == "ARG":
            key, _, value = i["value"].partition("=")
            out[key] = value
    return out


def test_one_dockerfile_builds_arm64_and_amd64_on_a_base_named_once() -> None:
    """`make images` builds both platforms from this file with a locally made base passed as
    BASE_IMAGE/BUILD_IMAGE: a stage pinned to one platform, or a base image written into a
    FROM instead of the argument, would build the wrong thing or need a registry."""
    path = ROOT / "Dockerfile"
    args = global_args(path)
    assert args["BASE_IMAGE"] == "debian:bookworm-slim", "the real default: Docker Hub's Debian"
    assert args["BUILD_IMAGE"] == "${BASE_IMAGE}"
    froms = {name: instrs[0]["value"] for name, instrs in stages(path).items()}
    assert froms["build"] == "--platform=$BUILDPLATFORM ${BUILD_IMAGE} AS build"
    assert froms["base"] == "${BASE_IMAGE} AS base"
    assert {froms["venv"], froms["runtime"]} == {"base AS venv", "base AS runtime"}
    assert "linux/arm64" not in " ".join(froms.values())


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_labels_name_the_base_it_was_built_on(path: Path) -> None:
    """The OCI labels a device's `docker inspect` shows: version and revision from the build
    arguments, and the base image the build really used (an argument, not a constant)."""
    text = " ".join(i["value"] for i in final_stage(path) if i["instruction"] == "LABEL")
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', text))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${VCS_REF}"
    base = labels["org.opencontainers.image.base.name"]
    assert base in ("${BASE_IMAGE}", "${L4T_IMAGE}"), base
    assert base.strip("${}") in global_args(path)


def test_runtime_stage_carries_no_build_tools() -> None:
    """No compiler, pip, npm or package lists in what a device pulls: the runtime stage copies
    only the venv (pip removed from it) and the models, and installs Debian's python3 alone."""
    path = ROOT / "Dockerfile"
    all_stages = stages(path)
    runtime = all_stages["runtime"]
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies == [
        "--from=venv /opt/venv /opt/venv",
        "--from=venv /usr/share/ca-certificates /usr/share/ca-certificates",
        "--from=venv /etc/ssl/certs /etc/ssl/certs",
        "--from=build /models /models",
    ]
    base_runs = " ".join(i["value"] for i in all_stages["base"] if i["instruction"] == "RUN")
    installed = re.search(r"--no-install-recommends ([^&]+)&&", base_runs).group(1).split()
    assert installed == ["python3"]
    assert "rm -rf /var/lib/apt/lists/*" in base_runs
    venv = " ".join(i["value"] for i in all_stages["venv"] if i["instruction"] == "RUN")
    assert "pip uninstall -y -q pip setuptools" in venv
    assert not re.search(r"\b(gcc|g\+\+|build-essential|[a-z0-9.+-]+-dev)\b", path.read_text())


def test_health_check_runs_the_venvs_python_as_the_user() -> None:
    """The exec-form health check finds `python` on the image's PATH (the venv), runs as the
    image's user, and allows the start a slow board needs."""
    final = final_stage(ROOT / "Dockerfile")
    check = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"][-1]
    assert '["python", "-c"' in check and "--start-period=" in check
    assert dockerfile_env(ROOT / "Dockerfile")["PATH"].startswith("/opt/venv/bin:")


def test_ota_waits_longer_than_the_drain() -> None:
    """deploy/images/ota.sh stops the old slot with `docker stop --time OTA_STOP_S`: shorter
    than the drain and Docker kills it mid-drain."""
    settings = pytest.importorskip("edge.settings")
    script = (ROOT / "deploy" / "images" / "ota.sh").read_text()
    stop = float(re.search(r"stop_s=\$\{OTA_STOP_S:-(\d+)\}", script).group(1))
    assert stop > settings.Settings().drain_seconds
    assert "--stop-timeout" in script and "docker stop --time" in script


def test_jetson_build_stage_is_the_one_built_here() -> None:
    """The Jetson image's build stage (wheel and models) is the one `make images` builds and
    tests/test_images.py runs; a copy that drifts is built nowhere before a Jetson build."""
    jetson, main = stages(JETSON / "Dockerfile")["build"], stages(ROOT / "Dockerfile")["build"]
    assert [(i["instruction"], i["value"]) for i in jetson] == [
        (i["instruction"], i["value"]) for i in main
    ]


@pytest.mark.parametrize(
    ("wheel", "refused"),
    [
        ("", "ORT_WHEEL is required"),
        ("onnxruntime_gpu-1.20.0-cp311-cp311-linux_aarch64.whl", "not a cp310 aarch64 wheel"),
        ("onnxruntime_gpu-1.20.0-cp310-cp310-linux_x86_64.whl", "not a cp310 aarch64 wheel"),
        ("onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl", None),
    ],
)
def test_jetson_build_refuses_a_wrong_wheel_before_installing(
    wheel: str, refused: str | None
) -> None:
    """The part of the Jetson install step that needs no L4T base, run as the build runs it
    (bash, pipefail): no NVIDIA image or GPU exists here to build the stage itself."""
    run = next(i["value"] for i in stages(JETSON / "Dockerfile")["runtime"]
               if i["instruction"] == "RUN" and "ORT_WHEEL" in i["value"])  # fmt: skip
    script = re.sub(r"^(--mount=\S+\s+)+", "", run).split(" && python3 -m venv")[0]
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", script + ' && echo "install $ort"'],
                          env={"ORT_WHEEL": wheel, "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if refused:
        assert proc.returncode == 1 and refused in proc.stderr, proc
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == f"install /tmp/ort-wheels/{wheel}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_frontend_image_to_pull(path: Path) -> None:
    """A `# syntax=` line makes BuildKit pull its frontend image from a registry first, which
    fails where none is reachable (`make images`); the engine's built-in frontend reads
    everything these files use (RUN --mount, --platform)."""
    assert not re.match(r"#\s*syntax\s*=", path.read_text(), re.IGNORECASE)
