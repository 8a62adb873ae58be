"""What the deployment files must agree on, which no linter or schema can know: the images
against the manifests, the Jetson compose file and systemd unit against the drain, and every
EDGE_* name against edge/settings.py. The Kubernetes manifests among themselves:
tests/test_k8s.py. Syntax, schemas and Dockerfile practice: hadolint, kubernetes-validate and
yamllint (tests/test_deploy_tools.py).

No Docker engine, cluster or network needed. `deploy/check.sh` runs all three files.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from edge.compat import tomllib
from tests.deploy_util import (
    DOCKERFILES,
    DOCS,
    JETSON,
    K8S,
    PORT,
    ROOT,
    UID,
    dockerfile,
    dockerfile_env,
    final_stage,
    pod_spec,
)  # fmt: skip

pytestmark = pytest.mark.unit

COMPOSE = JETSON / "docker-compose.yml"
UNIT = JETSON / "edge-gateway.service"

#: Every EDGE_* setting the server reads (edge/settings.py: "EDGE_" + field name, upper case).
KNOWN_SETTINGS = {
    "EDGE_ALLOWED_ORIGINS", "EDGE_AUTH_TIMEOUT_S", "EDGE_AUTH_TOKENS", "EDGE_AUTH_TOKENS_FILE",
    "EDGE_DEFAULT_MODEL", "EDGE_DRAIN_DELAY_S", "EDGE_DRAIN_SECONDS", "EDGE_REQUEST_TIMEOUT_S",
    "EDGE_HEARTBEAT_S", "EDGE_CANARY", "EDGE_GRPC_PORT",
    "EDGE_HOST", "EDGE_IDLE_TIMEOUT_S", "EDGE_JWT_AUDIENCE", "EDGE_JWT_PUBLIC_KEY",
    "EDGE_JWT_SECRET", "EDGE_LOG_FORMAT", "EDGE_LOG_LEVEL", "EDGE_MAX_FPS_PER_CLIENT",
    "EDGE_MAX_FPS_PER_STREAM", "EDGE_MAX_FRAME_BYTES", "EDGE_MAX_INFLIGHT",
    "EDGE_MAX_INFER_BYTES", "EDGE_MAX_JSON_BYTES", "EDGE_MAX_CONNECTIONS",
    "EDGE_MAX_PENDING_AUTH", "EDGE_MAX_PENDING_AUTH_PER_CLIENT", "EDGE_MAX_STREAMS_PER_CLIENT",
    "EDGE_WEBRTC_PEER_ADDRESSES",
    "EDGE_MAX_MESSAGE_BYTES", "EDGE_MAX_OVERSIZE_FRAMES", "EDGE_MAX_PENDING_RESULTS",
    "EDGE_MAX_PIXELS", "EDGE_MAX_PNG_PIXELS", "EDGE_MAX_STREAMS", "EDGE_MAX_STREAMS_PER_TOKEN",
    "EDGE_MAX_LOOP_LAG_MS", "EDGE_MODELS", "EDGE_PROCESSES",
    "EDGE_PORT", "EDGE_PROVIDERS", "EDGE_SEND_TIMEOUT_S", "EDGE_SINKS", "EDGE_SINK_QUEUE",
    "EDGE_SINK_TIMEOUT_S", "EDGE_SINK_RETRY_MAX_S", "EDGE_STUN_SERVERS", "EDGE_TLS_CERT",
    "EDGE_TLS_KEY", "EDGE_TRACING", "EDGE_TRT_CACHE", "EDGE_TRT_FP16", "EDGE_TRT_WORKSPACE_MB",
    "EDGE_TURN_SERVERS", "EDGE_WATCH_MODELS_S", "EDGE_WEB_ROOT", "EDGE_WORKERS",
}  # fmt: skip
#: Registries that base images come from (.hadolint.yaml's trustedRegistries).
BASE_REGISTRIES = {"docker.io", "nvcr.io"}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\[?([A-Za-z0-9.:-]+?)\]?(?=[:/?#\s\"'`)]|$)")
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_SETTING = re.compile(r"\bEDGE_[A-Z0-9_]*[A-Z0-9]\b")


# -- helpers ----------------------------------------------------------------------------------
def seconds(value: str | int) -> float:
    """A compose/systemd duration such as 30s, 1m30s, 90 or 2min, in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(value))
    assert parts, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rx = re.sub(r"\\\[(.*?)\\\]", lambda m: "[" + m.group(1).replace("\\", "") + "]", rx)
        if any(re.fullmatch(rx, c) for c in candidates):
            excluded = not negate
    return excluded


# -- Dockerfiles -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_serves_what_kubernetes_and_compose_expect(path: Path) -> None:
    """The port the manifests probe, a health check on the liveness path, SIGTERM (it starts
    the drain) as the stop signal, and no CMD flags, which would outrank the EDGE_* settings
    an operator sets."""
    final = final_stage(path)

    def args(cmd: str) -> list[str]:
        return [i["value"] for i in final if i["instruction"] == cmd]

    assert str(PORT) in {p.split("/")[0] for v in args("EXPOSE") for p in v.split()}
    assert args("HEALTHCHECK") and "/healthz" in args("HEALTHCHECK")[-1]
    assert args("STOPSIGNAL") == ["SIGTERM"]
    assert args("ENTRYPOINT") == ['["edge"]']
    assert not re.search(r"--(host|port|models)\b", " ".join(args("CMD")))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_settings_agree_with_kubernetes(path: Path) -> None:
    """The image's port, models path and uid must be the ones the manifests probe and enforce."""
    env = dockerfile_env(path)
    assert env["EDGE_PORT"] == str(PORT) and env["EDGE_MODELS"] == "/models"
    user = [i["value"] for i in final_stage(path) if i["instruction"] == "USER"][-1]
    assert user.split(":")[0] == str(UID) == str(pod_spec()["securityContext"]["runAsUser"])


def test_jetson_image_prefers_tensorrt_with_a_cache() -> None:
    env = dockerfile_env(JETSON / "Dockerfile")
    assert env["EDGE_PROVIDERS"] == "tensorrt,cuda,cpu"
    assert env["EDGE_TRT_CACHE"].startswith("/var/cache/")


def test_jetson_image_runs_jetpacks_python_which_the_package_supports() -> None:
    """JetPack 6's Python is 3.10 and NVIDIA's onnxruntime-gpu wheels are cp310: the image
    must ask for that wheel tag, run that Python, and the package must still admit it."""
    text = (JETSON / "Dockerfile").read_text()
    assert "-cp310-cp310-" in text and "sys.version_info[:2] == (3, 10)" in text
    assert not re.search(r"python3\.1[1-9]", text), "JetPack's python3, not another one"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]).contains("3.10")


def test_build_context_keeps_what_dockerfiles_copy() -> None:
    """.dockerignore is an allow-list; a COPY source it drops fails the build (or, for a
    directory, silently ships it empty)."""
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]  # fmt: skip
    for path in DOCKERFILES:
        for i in dockerfile(path).structure:
            cmd, value = i["instruction"], i["value"]
            if cmd == "COPY" and "--from=" not in value:
                sources = [w for w in value.split() if not w.startswith("--")][:-1]
            elif cmd == "RUN":  # bind mounts of the build context
                mounts = re.findall(r"--mount=(\S+)", value)
                sources = [re.search(r"\bsource=([^,]+)", m).group(1) for m in mounts
                           if "type=bind" in m and "from=" not in m]  # fmt: skip
            else:
                continue
            for src in sources:
                matches = list(ROOT.glob(src.rstrip("/")))
                assert matches or "*" in src, f"{path.name}: COPY {src}: not in the repository"
                for m in matches:
                    rel = m.relative_to(ROOT).as_posix()
                    assert not dockerignored(rel, patterns), f"{rel} is excluded by .dockerignore"
    for m in [*ROOT.glob("edge/**/*.py"), *ROOT.glob("models/*/model.toml")]:
        rel = m.relative_to(ROOT).as_posix()
        assert not dockerignored(rel, patterns), f"{rel} is excluded by .dockerignore"
    for rel in (".git/config", "tests/test_deploy.py", "models/blazeface/1/model.onnx",
                "edge/__pycache__/x.pyc"):  # fmt: skip
        assert dockerignored(rel, patterns), f"{rel} should not be sent to the builder"


# -- Jetson compose and systemd ---------------------------------------------------------------
def compose_service() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]["edge"]


def test_compose_runs_on_the_gpu_and_keeps_engines() -> None:
    svc = compose_service()
    assert svc["runtime"] == "nvidia"
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")
    # Without a `test` the image's HEALTHCHECK (linted above) applies.
    assert "/healthz" in " ".join(svc["healthcheck"].get("test", ["/healthz"]))
    targets = {v.split(":")[1] for v in svc["volumes"]}
    assert {"/models", dockerfile_env(JETSON / "Dockerfile")["EDGE_TRT_CACHE"]} <= targets
    assert "latest" not in svc["image"]


def test_compose_and_systemd_wait_for_the_drain() -> None:
    """Docker's default stop timeout (10 s) and a short TimeoutStopSec both cut the drain."""
    svc = compose_service()
    drain = float(re.search(r":-(\d+)", svc["environment"]["EDGE_DRAIN_SECONDS"]).group(1))
    grace = seconds(svc["stop_grace_period"])
    assert svc["stop_signal"] == "SIGTERM" and grace > drain
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(UNIT.read_text())
    assert seconds(unit["Service"]["TimeoutStopSec"]) > grace
    assert "docker compose" in unit["Service"]["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# -- across all deployment files --------------------------------------------------------------
def deployment_texts() -> dict[Path, str]:
    files = [*DOCKERFILES, COMPOSE, UNIT, DOCS, *sorted(K8S.rglob("*.yaml")),
             *sorted(JETSON.glob("*.example"))]  # fmt: skip
    return {p: p.read_text() for p in files}


def test_every_edge_setting_named_is_known() -> None:
    """A misspelt EDGE_* variable is ignored by the server without a word."""
    for path, text in deployment_texts().items():
        unknown = set(_SETTING.findall(text)) - KNOWN_SETTINGS
        assert not unknown, f"{path.relative_to(ROOT)}: unknown settings {sorted(unknown)}"


def test_known_settings_match_the_server() -> None:
    """The list above drifts from edge/settings.py unless something compares them."""
    settings = pytest.importorskip("edge.settings")
    fields = settings.Settings.__dataclass_fields__
    assert {"EDGE_" + name.upper() for name in fields} == KNOWN_SETTINGS


def test_no_package_index_or_download_hosts() -> None:
    """Registry hosts stay out of the repository; only base-image registries, cluster-local
    names and reserved example domains may appear in a URL."""
    words = ("pypi", "pythonhosted", "npm", "registry", "index", "wheel", "download", "mirror")
    for path, text in deployment_texts().items():
        for host in {m.group(1).lower() for m in _URL.finditer(text)} - _LOCAL:
            allowed = (host in BASE_REGISTRIES or host.endswith((".svc", ".svc.cluster.local"))
                       or re.search(r"(^|\.)example(\.(com|net|org))?$", host))  # fmt: skip
            if path != DOCS:
                assert allowed, f"{path.relative_to(ROOT)}: URL host {host}"
            assert allowed or not any(w in host for w in words), f"{path}: {host}"
