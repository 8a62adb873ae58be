"""Every runnable example of README.md and docs/*.md runs as written against a live gateway.

The convention: a fenced code block whose info string has the word `run` after its language is
runnable; the language picks how it runs:

    ```sh run         (or bash, shell) with `bash -euo pipefail`: a failing command fails it
    ```python run     with this interpreter, as a file of its own

Unmarked blocks are illustrations (a camera, a broker, a Docker host) and are not run. A
runnable example runs as a user in a checkout would run it: in its own process, from the
repository root (so it may name the checkout's files, such as docs/dashboard.png), with this
environment's `edge` command first on PATH. `localhost:8080` stands for the gateway, as it
does for a user whose gateway listens on its default port: the test replaces it with the
address of a gateway it starts on a free port (BlazeFace only). An example fails when it exits
non-zero or prints an `error` reply of the protocol.

docs/protocols.md's gRPC and KServe examples are run by tests/test_grpc.py and
tests/test_kserve.py, which also generate the stubs and place the `face.jpg` they read.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from asyncio.subprocess import PIPE
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import running, settings_for
from tests.pace import deadline

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: an opening fence with `run` among the words after the language: ```sh run
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w+)[ \t]+(?:\S+[ \t]+)*run[ \t]*$")
SHELLS = ("sh", "bash", "shell")
#: what an example calls the gateway
PLACEHOLDER = "localhost:8080"
#: a protocol `error` reply, printed as JSON or as a Python dict
ERROR_REPLY = re.compile(r"""["']type["']: ["']error["']""")


@dataclass(frozen=True)
class Example:
    where: str  # path:line of the opening fence
    lang: str
    code: str


def collect(path: Path) -> list[Example]:
    """The runnable blocks of one Markdown file, their code unindented."""
    lines = path.read_text().splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        i += 1
        if not m:
            continue
        start, indent = i, len(m["indent"])
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        code = "\n".join(line[indent:] for line in lines[start:i]) + "\n"
        found.append(Example(f"{path.relative_to(ROOT)}:{start}", m["lang"], code))
    return found


EXAMPLES = [e for doc in DOCUMENTS for e in collect(doc)]


@pytest.mark.unit
def test_the_readme_examples_are_marked_runnable() -> None:
    """Guards against the marker convention silently matching nothing (a renamed marker, a
    reworded fence): the README's first examples, the ones a newcomer copies, are collected,
    and every collected block has a language this test can run."""
    readme = [e for e in EXAMPLES if e.where.startswith("README.md")]
    assert {e.lang for e in readme} >= {"python", "sh"}, readme
    assert all(e.lang in (*SHELLS, "python") for e in EXAMPLES), EXAMPLES
    assert all(PLACEHOLDER in e.code for e in EXAMPLES if "localhost" in e.code), EXAMPLES


@pytest.mark.integration
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
async def test_the_example_runs_as_written(example: Example, face_repo: Path) -> None:
    """Guards against documentation that shows a route, a file, an option or an import that
    no longer works: the example runs in its own process against a live gateway and must exit
    0 without an error reply."""
    async with running(settings_for(face_repo)) as (url, _):
        code = example.code.replace(PLACEHOLDER, url.removeprefix("http://"))
        if example.lang in SHELLS:
            argv = ["bash", "-euo", "pipefail", "-c", code]
        else:
            argv = [sys.executable, "-c", code]
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=PIPE, stderr=PIPE, env={**os.environ, "PATH": path}
        )
        try:
            # a safety net: an interpreter starting, a connection and a few frames
            out, err = await asyncio.wait_for(proc.communicate(), 30 + deadline(frames=10))
        except asyncio.TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            pytest.fail(f"{example.where} did not finish:\n{out.decode()}\n{err.decode()}")
    said = f"{example.where} ({example.lang}) said:\n{out.decode()}\n{err.decode()}"
    assert proc.returncode == 0, said
    assert not ERROR_REPLY.search(out.decode()), said
