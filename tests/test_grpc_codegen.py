"""The modules generated from proto/ that the repository holds (edge/rpc/gen) are what the
protos make today: a proto changed without `python -m edge.rpc.codegen` fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.rpc import codegen

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


def test_committed_modules_match_the_protos(tmp_path: Path) -> None:
    """Regenerates every proto into a temporary directory and compares, file by file, with
    the committed modules (the grpcio-tools version they name aside)."""
    fresh = codegen.generate(tmp_path)
    assert fresh, "nothing generated"
    committed = {p.name for p in codegen.GEN_DIR.iterdir() if "_pb2" in p.name}
    assert committed == {p.name for p in fresh}, "run python -m edge.rpc.codegen"
    for path in fresh:
        old = (codegen.GEN_DIR / path.name).read_text()
        assert _normalised(old) == _normalised(path.read_text()), (
            f"edge/rpc/gen/{path.name} is stale: run python -m edge.rpc.codegen"
        )


def test_every_proto_is_compiled() -> None:
    """A proto added to proto/ without a place in codegen.PROTOS would never be generated."""
    assert sorted(p.name for p in codegen.PROTO_DIR.glob("*.proto")) == sorted(codegen.PROTOS)


def test_generated_types_live_in_the_gateways_own_pool() -> None:
    """A client library loaded beside the server (stubs from the original contract,
    tritonclient) registers the same message names in protobuf's default pool; ours must not
    be there, or importing both fails."""
    from google.protobuf import descriptor_pool

    from edge.rpc.gen import POOL, inference_pb2  # noqa: F401

    assert POOL.FindMessageTypeByName("inference.InferenceRequest")
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("inference.InferenceRequest")
