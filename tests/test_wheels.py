"""Every runtime dependency resolves to a 64-bit ARM Linux wheel on every supported Python, so
the ARM64 image, the Jetson image and a plain `pip install` on a board need no compiler. A
dependency that stops publishing aarch64 wheels (or a new one that never did) fails here, in
CI, not on a device.

pip resolves the package's runtime requirements for the target (`--platform`,
`--python-version`, binary wheels only) and downloads them into a temporary folder; nothing is
installed. It needs the package index pip is configured with; pip's cache makes repeat runs
quick (docs/deploy.md, "Python versions", has the times). One limit of pip's: the markers of
*transitive* requirements are evaluated for the running interpreter, not the target, so a
backport that a dependency requires only below this Python (all pure-Python wheels so far) is
not fetched; our own requirements' markers are evaluated for the target here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edge.compat import tomllib

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
#: The Pythons the package supports (requires-python and docs/deploy.md).
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: Extras that are not part of any deployment.
NOT_RUNTIME = {"test", "fuzz"}
#: glibc-based aarch64 Linux up to glibc 2.35 (Ubuntu 22.04, which JetPack 6 is built on; the
#: Debian bookworm images have 2.36): wheels tagged for a newer glibc would not load there.
GLIBC_MINORS = range(17, 36)
PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in GLIBC_MINORS)]


def runtime_requirements(python: str) -> list[str]:
    """The package's dependencies and its runtime extras', with their markers evaluated for
    CPython `python` on aarch64 Linux."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = [*project["dependencies"]]
    specs += [s for name, reqs in extras.items() if name not in NOT_RUNTIME for s in reqs]
    target = {"python_version": python, "python_full_version": f"{python}.0",
              "platform_machine": "aarch64", "sys_platform": "linux",
              "platform_system": "Linux", "implementation_name": "cpython",
              "platform_python_implementation": "CPython"}  # fmt: skip
    out = []
    for spec in specs:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate(target):
            req.marker = None
            out.append(str(req))
    return sorted(set(out))


def test_requirements_cover_the_backports_below_3_11() -> None:
    """The markers are evaluated for the target, not for this interpreter."""
    names = {Requirement(r).name for r in runtime_requirements("3.10")}
    assert {"async-timeout", "tomli", "onnxruntime", "aiortc"} <= names
    assert not {"async-timeout", "tomli"} & {
        Requirement(r).name for r in runtime_requirements("3.12")
    }


@pytest.mark.parametrize("python", PYTHONS)
def test_runtime_dependencies_have_aarch64_wheels(python: str, tmp_path: Path) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary", ":all:", *platforms, "--python-version", python,
         "--implementation", "cp", "--dest", str(tmp_path), *runtime_requirements(python)],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, f"Python {python}, aarch64:\n{proc.stderr[-3000:]}"
    wheels = sorted(p.name for p in tmp_path.iterdir())
    assert all(w.endswith(".whl") for w in wheels), wheels
    native = [w for w in wheels if not w.endswith("-any.whl")]
    assert native and all("aarch64" in w for w in native), native
    assert any(w.startswith("onnxruntime-") for w in wheels)
