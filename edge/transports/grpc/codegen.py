"""Regenerate edge/transports/grpc/gen/ from proto/: `python -m edge.transports.grpc.codegen`
(needs grpcio-tools TOOLS_VERSION, pinned in the `test` extra). tests/test_grpc_codegen.py fails
when the committed modules are stale.

The modules are generated with an old grpcio-tools on purpose: generated code refuses a
protobuf runtime older than the protoc that made it, and grpc stubs a grpcio older than
their generator, so the tools' age sets the floors of protobuf and grpcio in pyproject.toml
(docs/deploy.md, "gRPC and protobuf versions"). 1.62.3 is the last release whose output
checks neither: it needs protobuf 4.25.1 and grpcio 1.62.3, and runs on every newer 4.x to 7.x.

Each proto in PROTOS is compiled as if it lived at edge/transports/grpc/gen/<name> (its
`import "x.proto"`
of another one in PROTOS rewritten to match), so the generated modules import each other as
`edge.transports.grpc.gen.<name>_pb2`; then their types are put in the gateway's own descriptor pool
(edge.transports.grpc.gen.POOL) instead of protobuf's default one.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"
PACKAGE = "edge/transports/grpc/gen"
#: the grpcio-tools release the committed modules are generated with
TOOLS_VERSION = "1.62.3"
#: the protos to compile, in proto/; a service another module adds puts its file here
PROTOS = ["inference.proto", "grpc_predict_v2.proto"]

_DEFAULT_POOL = "_descriptor_pool.Default()"
_OWN_POOL = "_own_pool"
_POOL_IMPORT = "from edge.transports.grpc.gen import POOL as _own_pool\n"


def generate(out: Path, protos: list[str] | None = None) -> list[Path]:
    """Compile `protos` (default PROTOS) into `out`; returns the files written there."""
    from grpc_tools import protoc

    protos = protos or PROTOS
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        dst = Path(tmp) / "out"
        (src / PACKAGE).mkdir(parents=True)
        dst.mkdir()
        for name in protos:
            text = (PROTO_DIR / name).read_text()
            (src / PACKAGE / name).write_text(_IMPORT.sub(lambda m: _moved(m, protos), text))
        include = str(Path(protoc.__file__).parent / "_proto")  # well-known types
        args = [
            "protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={dst}",
            f"--pyi_out={dst}",
            f"--grpc_python_out={dst}",
            *(f"{PACKAGE}/{name}" for name in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos}")
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted((dst / PACKAGE).iterdir()):
            text = path.read_text()
            if path.name.endswith("_pb2.py"):
                text = _own_pool(text, path.name)
            (out / path.name).write_text(text)
            written.append(out / path.name)
    return written


_IMPORT = re.compile(r'^(import\s+(?:public\s+)?)"([^"/]+\.proto)";', re.M)


def _moved(match: re.Match[str], protos: list[str]) -> str:
    """An import of a sibling proto, as the path it is compiled under."""
    head, name = match[1], match[2]
    return f'{head}"{PACKAGE}/{name}";' if name in protos else match[0]


def _own_pool(text: str, name: str) -> str:
    """Register the module's types in edge.transports.grpc.gen.POOL rather than the default pool."""
    if text.count(_DEFAULT_POOL) != 1:
        raise RuntimeError(f"{name}: expected one {_DEFAULT_POOL} in protoc's output")
    head, sep, tail = text.partition("\n_sym_db")
    return head + "\n" + _POOL_IMPORT + sep.lstrip("\n") + tail.replace(_DEFAULT_POOL, _OWN_POOL)


def tools_version() -> str | None:
    """The grpcio-tools release installed here, or None."""
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> int:
    if (found := tools_version()) != TOOLS_VERSION:
        print(
            f"codegen: grpcio-tools {found or 'is not installed'}; the modules are generated "
            f"with {TOOLS_VERSION}: pip install 'grpcio-tools=={TOOLS_VERSION}'",
            file=sys.stderr,
        )
        return 2
    for path in generate(GEN_DIR):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
