"""The Kubernetes manifests against each other, the image and the server: what a schema
cannot know (tests/test_deploy_tools.py validates the schemas)."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from tests.deploy_util import DOCS, K8S, PORT, config, manifest_files, objects, pod_spec, server
from tests.kustomize import yaml_docs

pytestmark = pytest.mark.unit


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
