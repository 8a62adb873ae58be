"""What the deployment files must agree on, which no linter or schema can know: the image's
port, user and settings against the manifests and edge/settings.py, probes on the health
endpoints, stop timeouts that cover the drain. Syntax, schemas and Dockerfile practice are
checked by hadolint, kubernetes-validate and yamllint (tests/test_deploy_tools.py).

No Docker engine, cluster or network needed. `deploy/check.sh` runs both files.
"""

from __future__ import annotations

import configparser
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet

from edge.compat import tomllib
from tests.kustomize import render, yaml_docs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
JETSON = ROOT / "deploy" / "jetson"
DOCKERFILES = [ROOT / "Dockerfile.arm64", JETSON / "Dockerfile"]
COMPOSE = JETSON / "docker-compose.yml"
UNIT = JETSON / "edge-gateway.service"
DOCS = ROOT / "docs" / "deploy.md"

#: Every EDGE_* setting the server reads (edge/settings.py: "EDGE_" + field name, upper case).
KNOWN_SETTINGS = {
    "EDGE_ALLOWED_ORIGINS", "EDGE_AUTH_TIMEOUT_S", "EDGE_AUTH_TOKENS", "EDGE_AUTH_TOKENS_FILE",
    "EDGE_DEFAULT_MODEL", "EDGE_DRAIN_DELAY_S", "EDGE_DRAIN_SECONDS", "EDGE_REQUEST_TIMEOUT_S",
    "EDGE_HEARTBEAT_S",
    "EDGE_HOST", "EDGE_IDLE_TIMEOUT_S", "EDGE_JWT_AUDIENCE", "EDGE_JWT_PUBLIC_KEY",
    "EDGE_JWT_SECRET", "EDGE_LOG_FORMAT", "EDGE_LOG_LEVEL", "EDGE_MAX_FPS_PER_CLIENT",
    "EDGE_MAX_FPS_PER_STREAM", "EDGE_MAX_FRAME_BYTES", "EDGE_MAX_INFLIGHT",
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
PORT = 8080
UID = 10001
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\[?([A-Za-z0-9.:-]+?)\]?(?=[:/?#\s\"'`)]|$)")
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_SETTING = re.compile(r"\bEDGE_[A-Z0-9_]*[A-Z0-9]\b")


# -- helpers ----------------------------------------------------------------------------------
def manifest_files() -> list[Path]:
    return [p for p in sorted(K8S.rglob("*.yaml"))
            if p.name != "kustomization.yaml" and not p.name.endswith("-values.yaml")]  # fmt: skip


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomizations apply (as kustomize renders them), by (kind, name)."""
    out = {}
    for kust in sorted(K8S.rglob("kustomization.yaml")):
        for obj in render(kust.parent):
            out[(obj["kind"], obj["metadata"]["name"])] = obj
    return out


def pod_spec() -> dict[str, Any]:
    return objects()[("Deployment", "edge-gateway")]["spec"]["template"]["spec"]


def server() -> dict[str, Any]:
    return next(c for c in pod_spec()["containers"] if c["name"] == "edge")


def config() -> dict[str, str]:
    return objects()[("ConfigMap", "edge-config")]["data"]


def seconds(value: str | int) -> float:
    """A compose/systemd duration such as 30s, 1m30s, 90 or 2min, in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(value))
    assert parts, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile(path: Path) -> DockerfileParser:
    """Docker's own parsing rules (dockerfile-parse), read-only: nothing is written back."""
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))


def final_stage(path: Path) -> list[dict[str, Any]]:
    """The instructions of a Dockerfile's last stage (continuations joined, comments out)."""
    instrs = [i for i in dockerfile(path).structure if i["instruction"] != "COMMENT"]
    start = max(n for n, i in enumerate(instrs) if i["instruction"] == "FROM")
    return instrs[start:]


def dockerfile_env(path: Path) -> dict[str, str]:
    return dockerfile(path).envs


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


# -- Kubernetes -------------------------------------------------------------------------------
def test_kustomizations_list_every_manifest_and_no_example() -> None:
    """A manifest left out of kustomization.yaml is silently never applied; the example Secret
    listed in it would install a token that is public in git."""
    listed = set()
    for kust in K8S.rglob("kustomization.yaml"):
        res = yaml.safe_load(kust.read_text())["resources"]
        listed |= {(kust.parent / r).resolve() for r in res}
        assert all((kust.parent / r).is_file() for r in res), f"{kust}: missing resource"
    for path in manifest_files():
        if path.name.endswith(".example.yaml"):
            assert path.resolve() not in listed
        else:
            assert path.resolve() in listed, f"{path} is not in a kustomization.yaml"


def test_namespace_exists_and_holds_everything() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert ("Namespace", kust["namespace"]) in objects()
    for obj in objects().values():
        assert obj["metadata"].get("namespace", kust["namespace"]) == kust["namespace"]


def test_values_files_are_not_manifests() -> None:
    for path in K8S.rglob("*-values.yaml"):
        assert "kind" not in yaml_docs(path)[0], f"{path}: a values file, not a manifest"


def test_probes_hit_health_endpoints_on_the_container_port() -> None:
    c = server()
    names = {p.get("name"): p["containerPort"] for p in c["ports"]}
    assert PORT in names.values()
    assert str(PORT) == config()["EDGE_PORT"]
    paths = {"livenessProbe": {"/healthz"}, "readinessProbe": {"/readyz"},
             "startupProbe": {"/healthz", "/readyz"}}  # fmt: skip
    for probe, allowed in paths.items():
        get = c[probe]["httpGet"]
        assert get["path"] in allowed, probe
        assert names.get(get["port"], get["port"]) == PORT, probe
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 120, "slow first model load"


def test_grace_period_covers_prestop_and_drain() -> None:
    """SIGKILL before the drain finishes drops every in-flight frame of every stream."""
    pre = server()["lifecycle"]["preStop"]
    sleep = pre["sleep"]["seconds"] if "sleep" in pre else float(pre["exec"]["command"][-1])
    assert pre.get("exec", {}).get("command", ["sleep"])[0].endswith("sleep")
    drain = float(config()["EDGE_DRAIN_SECONDS"])
    assert pod_spec()["terminationGracePeriodSeconds"] > sleep + drain


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def megabytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}
    found = re.fullmatch(r"([\d.]+)([A-Za-z]*)", quantity)
    assert found, f"not a quantity: {quantity}"
    return float(found.group(1)) * units[found.group(2)] / 1e6


def memory_per_process() -> tuple[float, float]:
    """(supervisor, one serving process) in MB, as measured in docs/deploy.md."""
    found = re.search(r"about (\d+) MB resident; the supervisor about (\d+) MB", DOCS.read_text())
    assert found, "docs/deploy.md, 'Serving processes and memory': the measured figures"
    return float(found.group(2)), float(found.group(1))


def test_processes_cpu_and_memory_agree() -> None:
    """One serving process per CPU of the limit (set from it, so the two cannot drift), one
    inference thread each, and memory for the supervisor plus every process by the figures
    docs/deploy.md measured, with a fifth to spare for frames, buffers and the allocator."""
    c = server()
    env = {e["name"]: e for e in c["env"]}
    ref = env["EDGE_PROCESSES"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and ref["containerName"] == c["name"]
    assert str(ref.get("divisor", "1")) == "1"
    assert "EDGE_PROCESSES" not in config(), "the Deployment sets it from the CPU limit"
    assert config()["EDGE_WORKERS"] == "1" and "EDGE_WORKERS" not in env
    res = c["resources"]
    assert res["requests"] == res["limits"], "Guaranteed QoS: requests equal limits"
    processes = math.ceil(cpus(res["limits"]["cpu"]))
    supervisor, per_process = memory_per_process()
    need = 1.2 * (supervisor + processes * per_process)
    assert megabytes(res["limits"]["memory"]) >= need, f"{processes} processes need {need} MB"


def test_pod_runs_non_root_read_only_with_writable_tmp() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["enableServiceLinks"] is False, "service links inject EDGE_-prefixed variables"
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    mounts = {m["mountPath"]: m for m in server()["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/models"]["readOnly"] is True


def test_env_references_resolve() -> None:
    c = server()
    for ref in c["envFrom"]:
        assert ("ConfigMap", ref["configMapRef"]["name"]) in objects()
    example = yaml_docs(K8S / "secret.example.yaml")[0]
    for env in c["env"]:
        assert env["name"] in KNOWN_SETTINGS
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == example["metadata"]["name"]
            assert ref.get("optional") or ref["key"] in example["stringData"]


def test_service_and_budget_select_the_pods() -> None:
    labels = objects()[("Deployment", "edge-gateway")]["spec"]["template"]["metadata"]["labels"]
    svc = objects()[("Service", "edge-gateway")]["spec"]
    assert svc["selector"].items() <= labels.items()
    assert svc["ports"][0]["port"] == PORT and svc["ports"][0]["targetPort"] == "http"
    pdb = objects()[("PodDisruptionBudget", "edge-gateway")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_hpa_targets_the_deployment_on_published_metrics() -> None:
    """An HPA naming a metric the adapter does not publish never scales on it."""
    hpa = objects()[("HorizontalPodAutoscaler", "edge-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    deployment = objects()[(ref["kind"], ref["name"])]
    assert ref["kind"] == "Deployment" and ref["apiVersion"] == deployment["apiVersion"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2
    adapter = yaml_docs(K8S / "monitoring" / "prometheus-adapter-values.yaml")[0]
    published = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert {"edge_active_streams", "edge_inflight_frames"} <= published
    pods = {m["pods"]["metric"]["name"]: m["pods"]["target"]
            for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}  # fmt: skip
    assert set(pods) <= published and "edge_active_streams" in pods
    target = pods["edge_active_streams"]
    assert target["type"] == "AverageValue"
    assert float(target["averageValue"]) < int(config()["EDGE_MAX_STREAMS"])


def test_servicemonitor_scrapes_the_service_port() -> None:
    mon = objects()[("ServiceMonitor", "edge-gateway")]["spec"]
    svc = objects()[("Service", "edge-gateway")]
    assert mon["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert mon["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert mon["endpoints"][0]["path"] == "/metrics"


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
