"""Real photographs for tests, taken from the scikit-image wheel (BSD-licensed sample data).

`sample_image("astronaut.png")` returns a path under `.cache/testdata/` at the repository root.
The first call downloads one pinned wheel with pip (no install, no dependencies, no code run)
and unpacks only the images listed here, each checked against its SHA-256. A file lock makes
concurrent test processes wait for one download; files appear by atomic rename. scikit-image
is never imported and is not a dependency of the project.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

SKIMAGE = "scikit-image==0.26.0"
# One fixed wheel whatever machine runs the tests (it is only unzipped, never installed).
_WHEEL_TAGS = [
    "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
    "--implementation", "cp", "--abi", "cp311",
]  # fmt: skip

#: file name -> SHA-256 of the images in scikit-image 0.26.0's skimage/data/
IMAGES = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    "page.png": "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
    "text.png": "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "coins.png": "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
}

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "testdata"


@functools.cache
def sample_image(name: str) -> Path:
    """Path of a scikit-image sample picture, fetched and checked on first use."""
    if name not in IMAGES:
        raise ValueError(f"no pinned sample image {name!r}; known: {sorted(IMAGES)}")
    path = CACHE / name
    if _intact(path, IMAGES[name]):
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not _intact(path, IMAGES[name]):
            _unpack_all()
    return path


def load_rgb(name: str) -> np.ndarray:
    """A sample picture as HxWx3 uint8 RGB (grey pictures are repeated over 3 channels)."""
    with PILImage.open(sample_image(name)) as im:
        return np.asarray(im.convert("RGB"))


def _intact(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def _unpack_all() -> None:
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".wheel-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            *_WHEEL_TAGS, "--disable-pip-version-check", "--quiet", "--dest", tmp, SKIMAGE,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"could not download {SKIMAGE} for test images: {done.stderr}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, sha256 in IMAGES.items():
                data = wheel.read(f"skimage/data/{name}")
                got = hashlib.sha256(data).hexdigest()
                if got != sha256:
                    raise RuntimeError(f"{SKIMAGE}: {name} has SHA-256 {got}, expected {sha256}")
                fd, part = tempfile.mkstemp(dir=CACHE, prefix=f".{name}.")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(part, 0o644)
                os.replace(part, CACHE / name)
