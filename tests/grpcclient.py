"""gRPC clients for the tests: stubs generated here, with grpcio-tools, from the ORIGINAL
contract (fields 1 and 2 only), so a test that uses them proves wire compatibility.

The original stubs register `inference.InferenceRequest` in protobuf's default pool; the
gateway's own modules live in a pool of their own (edge.transports.grpc.gen.POOL), so both load in
one
process. What the original contract cannot read (seq, status, detections) the tests read by
decoding the same bytes with the gateway's full message (`full`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from edge.settings import Settings
from edge.transports.grpc.gen import inference_pb2 as ours
from tests.conftest import free_port, running
from tests.wsclient import Books

#: the contract as the system the gateway is built from published it
ORIGINAL_PROTO = """
syntax = "proto3";
package inference;
service InferenceService {
  rpc Predict (InferenceRequest) returns (InferenceResponse);
  rpc PredictStream (stream InferenceRequest) returns (stream InferenceResponse);
}
message InferenceRequest { bytes payload = 1; string model_id = 2; }
message InferenceResponse { repeated float scores = 1; uint32 label = 2; }
"""

STATUS = {0: "result", 1: "dropped", 2: "error"}


@functools.cache
def original() -> tuple[ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc) generated now from ORIGINAL_PROTO."""
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="original-proto-"))
    (out / "inference.proto").write_text(ORIGINAL_PROTO)
    rc = protoc.main(
        ["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}", "inference.proto"]
    )
    assert rc == 0, "protoc failed on the original contract"
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("inference_pb2"), importlib.import_module(
            "inference_pb2_grpc"
        )
    finally:
        sys.path.remove(str(out))


def stub(channel: grpc.aio.Channel) -> Any:
    return original()[1].InferenceServiceStub(channel)


def request(payload: bytes, model_id: str = "") -> Any:
    return original()[0].InferenceRequest(payload=payload, model_id=model_id)


def full(response: Any) -> ours.InferenceResponse:
    """What the gateway sent, read with its full contract (the original keeps the new fields
    as unknown fields and writes them back)."""
    return ours.InferenceResponse.FromString(response.SerializeToString())


def as_message(r: ours.InferenceResponse) -> dict[str, Any]:
    """A response in the WebSocket's terms, for tests.wsclient.Books."""
    msg: dict[str, Any] = {"type": STATUS[r.status], "seq": r.seq}
    if r.status == ours.InferenceResponse.DROPPED:
        msg["reason"] = r.reason
        if r.seqs:  # merged (merge_dropped): every frame it answers
            msg["seqs"] = list(r.seqs)
    elif r.status == ours.InferenceResponse.ERROR:
        msg["code"], msg["message"] = r.code, r.message
    else:
        msg["detections"] = [d.box for d in r.detections]
    return msg


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def grpc_gateway(settings: Settings) -> AsyncIterator[tuple[str, Any, str]]:
    """The real app (tests.conftest.running) with gRPC on a free port: (url, app, target)."""
    from dataclasses import replace

    port = free_port()
    async with running(replace(settings, grpc_port=port)) as (url, app):
        yield url, app, f"127.0.0.1:{port}"


async def read_stream(call: Any, books: Books) -> None:
    """Record every response of a PredictStream call, as it arrives (a call made with a
    request iterator; see `read_rest` for one written with `write`)."""
    async for response in call:
        books.record(as_message(full(response)))


async def read_rest(call: Any, books: Books) -> None:
    """`read_stream` for a call written with `write`: gRPC forbids mixing the two styles."""
    while (response := await call.read()) is not grpc.aio.EOF:
        books.record(as_message(full(response)))


async def paced(
    books: Books, data: bytes, count: int, fps: float = 0.0, model_id: str = ""
) -> AsyncIterator[Any]:
    """`count` requests, `fps` a second (0: as fast as gRPC takes them), noted in `books`."""
    start = time.monotonic()
    for seq in range(count):
        if fps:
            delay = start + seq / fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        books.sent_at[seq] = time.monotonic()
        yield request(data, model_id)
