"""What `kubectl apply -k DIR` would apply: `kubectl kustomize` when kubectl is installed, else
the same rendering in Python for the kustomization features deploy/k8s uses (resources,
namespace, images). Any other kustomization field fails loudly instead of being ignored."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

#: Kinds that live outside namespaces, among those deploy/k8s may hold; kustomize leaves
#: their metadata.namespace unset.
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "PersistentVolume", "APIService",
}  # fmt: skip
#: The kustomization fields the Python rendering understands.
SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "images"}


class UnsupportedKustomization(Exception):
    """The kustomization uses a field only kustomize itself renders."""


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k directory` would send to the API server (a copy: the
    caller may change them)."""
    return copy.deepcopy(_render(directory))


@functools.cache
def _render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d is not None]
    return render_in_python(directory)


def render_in_python(directory: Path) -> list[dict[str, Any]]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(
            f"{directory}: {sorted(unknown)} need kustomize itself; install kubectl"
        )
    out: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        out += render_in_python(path) if path.is_dir() else copy.deepcopy(yaml_docs(path))
    for obj in out:
        if "namespace" in kust and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kust["namespace"]
        for container in _containers(obj):
            container["image"] = _retag(container["image"], kust.get("images", []))
    return out


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _retag(image: str, rules: list[dict[str, str]]) -> str:
    """kustomize's `images:` rule for one container image: matched by name, it replaces the
    name, the tag, or the tag by a digest."""
    name, tag = image.split("@", 1)[0], ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    rule = next((r for r in rules if r["name"] == name), None)
    if rule is None:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    return f"{name}:{tag}" if tag else name
