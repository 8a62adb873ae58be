"""What the deployment tests share: where the files are, the values every deployment agrees
on, the Kubernetes objects as kustomize renders them, and Dockerfiles read by Docker's rules."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser

from tests.kustomize import render

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
JETSON = ROOT / "deploy" / "jetson"
DOCKERFILES = [ROOT / "Dockerfile", JETSON / "Dockerfile"]
DOCS = ROOT / "docs" / "deploy.md"
PORT = 8080
UID = 10001


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
