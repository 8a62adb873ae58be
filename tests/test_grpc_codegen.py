"""The modules generated from proto/ that the repository holds (edge/transports/grpc/gen) are what
the
protos make today: a proto changed without `python -m edge.transports.grpc.codegen` fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.transports.grpc import codegen

pytestmark = pytest.mark.unit

#: what depends on the grpcio-tools release rather than on the protos
_VERSIONS = (
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)", re.S),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
)


def _normalised(text: str) -> str:
    for pattern in _VERSIONS:
        text = pattern.sub("<version>", text)
    return text


def pinned_tools() -> None:
    """Skip where grpcio-tools is not installed (3.13: no wheel of the pinned release); fail
    where another release is, since its output differs from the committed modules."""
    found = codegen.tools_version()
    if found is None:
        pytest.skip("grpcio-tools is not installed (the test extra installs it before 3.13)")
    assert found == codegen.TOOLS_VERSION, (
        f"grpcio-tools {found} is installed; the modules are generated with "
        f"{codegen.TOOLS_VERSION}: pip install 'grpcio-tools=={codegen.TOOLS_VERSION}'"
    )


def test_committed_modules_match_the_protos(tmp_path: Path) -> None:
    """Regenerates every proto into a temporary directory with the pinned grpcio-tools and
    compares, file by file, with the committed modules: a proto changed without regenerating,
    or modules regenerated with newer tools (which would raise the protobuf and grpcio floors
    pyproject.toml promises), fails."""
    pinned_tools()
    fresh = codegen.generate(tmp_path)
    assert fresh, "nothing generated"
    committed = {p.name for p in codegen.GEN_DIR.iterdir() if "_pb2" in p.name}
    assert committed == {p.name for p in fresh}, "run python -m edge.transports.grpc.codegen"
    for path in fresh:
        old = (codegen.GEN_DIR / path.name).read_text()
        assert _normalised(old) == _normalised(path.read_text()), (
            f"edge/transports/grpc/gen/{path.name} is stale: "
            "run python -m edge.transports.grpc.codegen"
        )


def test_every_proto_is_compiled() -> None:
    """A proto added to proto/ without a place in codegen.PROTOS would never be generated."""
    assert sorted(p.name for p in codegen.PROTO_DIR.glob("*.proto")) == sorted(codegen.PROTOS)


def test_generated_types_live_in_the_gateways_own_pool() -> None:
    """A client library loaded beside the server (stubs from the original contract,
    tritonclient) registers the same message names in protobuf's default pool; ours must be
    in a pool of their own, or importing both fails."""
    from google.protobuf import descriptor_pool

    from edge.transports.grpc.gen import POOL, inference_pb2
    from tests.grpcclient import original

    mine = inference_pb2.InferenceRequest.DESCRIPTOR
    assert mine.file.pool is POOL and mine.file.pool is not descriptor_pool.Default()
    theirs = original()[0].InferenceRequest.DESCRIPTOR  # the same name, loaded beside ours
    assert theirs.full_name == mine.full_name and theirs.file.pool is descriptor_pool.Default()


def test_protos_that_import_each_other_compile_into_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proto taken as it is published imports its sibling as "x.proto" (Triton's
    grpc_service.proto imports model_config.proto): the generated module must import the
    sibling from edge.transports.grpc.gen, not as a top-level module that does not exist."""
    protos = tmp_path / "proto"
    protos.mkdir()
    (protos / "first.proto").write_text(
        'syntax = "proto3";\npackage codegen_test;\nmessage Inner { int32 x = 1; }\n'
    )
    (protos / "second.proto").write_text(
        'syntax = "proto3";\npackage codegen_test;\nimport "first.proto";\n'
        "message Outer { Inner inner = 1; }\n"
    )
    if codegen.tools_version() is None:
        pytest.skip("grpcio-tools is not installed")
    monkeypatch.setattr(codegen, "PROTO_DIR", protos)
    out = tmp_path / "out"
    codegen.generate(out, ["first.proto", "second.proto"])
    text = (out / "second_pb2.py").read_text()
    assert "from edge.transports.grpc.gen import first_pb2" in text
    assert "\nimport first_pb2" not in text and "_descriptor_pool.Default()" not in text
