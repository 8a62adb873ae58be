"""Fuzzing KServe v2 infer requests: REST bodies and gRPC ModelInfer messages with lying
shapes, sizes and datatypes, cut and mangled binary data, junk headers, bytes that are no
protobuf at all. The parser answers a request or a KServeError, never another exception; the
real server answers a 4xx with {"error": ...} (or 200), never a 500, or a status code over
gRPC, and serves a good request afterwards."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from tritonclient.grpc import service_pb2

from edge.kserve.errors import KServeError
from edge.kserve.rest import parse_request
from edge.kserve.tensors import DATATYPES
from tests.conftest import ROOT, jpeg, running, settings_for
from tests.fuzz_util import json_values, mutate
from tests.grpcclient import grpc_gateway

fuzz = settings(
    database=DirectoryBasedExampleDatabase(str(ROOT / ".cache" / "hypothesis")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
GOOD_RAW = np.zeros((1, 128, 128, 3), np.float32).tobytes()
IMAGE = jpeg("astronaut.png", (96, 96))


def good_bodies() -> list[tuple[bytes, str | None]]:
    """Valid requests of both forms, JSON and binary, to mutate."""
    raw_head = {
        "inputs": [
            {
                "name": "input:0",
                "datatype": "FP32",
                "shape": [1, 128, 128, 3],
                "parameters": {"binary_data_size": len(GOOD_RAW)},
            }
        ],
        "outputs": [{"name": "Identity:0", "parameters": {"binary_data": True}}],
    }
    img = struct.pack("<I", len(IMAGE)) + IMAGE
    img_head = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(img)},
            }
        ]
    }
    as_json = {
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}]
    }
    out = []
    for head, blob in ((raw_head, GOOD_RAW), (img_head, img)):
        text = json.dumps(head).encode()
        out.append((text + blob, str(len(text))))
    out.append((json.dumps(as_json).encode(), None))
    return out


GOOD = good_bodies()
shapes = st.lists(
    st.one_of(st.integers(0, 4), st.integers(-2, 2**40), st.sampled_from([128, 3, 1])), max_size=5
)


@st.composite
def tensors(draw: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "name": draw(st.sampled_from(["image", "input:0", "x", ""]) | st.text(max_size=8)),
        "datatype": draw(st.sampled_from([*DATATYPES, "BF16", "fp32", 7])),
        "shape": draw(shapes | json_values),
    }
    if draw(st.booleans()):
        t["data"] = draw(json_values | st.lists(st.floats() | st.integers(), max_size=20))
    if draw(st.booleans()):
        size = draw(st.integers(-1, 4096) | json_values)
        t["parameters"] = {"binary_data_size": size}
    if draw(st.integers(0, 9)) == 0:
        t["parameters"] = draw(json_values)
    return t


@st.composite
def bodies(draw: Any) -> tuple[bytes, str | None]:
    """A mutated good body, or a made-up one with random tensors and binary data."""
    if draw(st.booleans()):
        data, length = draw(st.sampled_from(GOOD))
        data = mutate(data, draw)
        length = draw(st.sampled_from([length, None, "0", str(len(data) + 5), "x", "-3"]))
        return data, length
    head = {"inputs": draw(st.lists(tensors(), max_size=3) | json_values)}
    if draw(st.booleans()):
        head["outputs"] = draw(json_values)
    if draw(st.booleans()):
        head["parameters"] = draw(json_values)
    text = json.dumps(head, allow_nan=True).encode()
    blob = draw(st.binary(max_size=256))
    length = draw(st.sampled_from([str(len(text)), None, str(len(text) + 1)]))
    return text + blob, length


@pytest.mark.unit
@settings(fuzz, max_examples=600)
@given(body=bodies())
@example(body=(b'{"inputs":[{"name":"b","datatype":"BYTES","shape":[1]}]}', None))
def test_parse_request_answers_a_request_or_a_protocol_error(
    body: tuple[bytes, str | None],
) -> None:
    data, length = body
    try:
        parse_request("m", "", data, length, 4096)
    except KServeError as e:
        assert e.message and e.http_status in (400, 413)


@pytest.fixture
async def server(face_repo: Path) -> AsyncIterator[str]:
    settings = settings_for(face_repo, max_frame_bytes=64 * 1024, max_infer_bytes=1 << 20)
    async with running(settings) as (url, _):
        yield url


@pytest.mark.integration
@settings(fuzz, max_examples=120)
@given(body=bodies(), model=st.sampled_from(["blazeface", "blazeface.raw"]))
async def test_the_server_answers_any_infer_body_with_4xx_json_or_a_result(
    server: str, body: tuple[bytes, str | None], model: str
) -> None:
    data, length = body
    headers = {} if length is None else {"Inference-Header-Content-Length": length}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server}/v2/models/{model}/infer", data=data, headers=headers) as r:
            assert r.status in (200, 400, 413), await r.text()
            if r.status != 200:
                assert (await r.json())["error"]
        good, good_length = GOOD[0]
        headers = {"Inference-Header-Content-Length": str(good_length)}
        async with http.post(
            f"{server}/v2/models/blazeface.raw/infer", data=good, headers=headers
        ) as r:
            assert r.status == 200, await r.text()


# -- gRPC ------------------------------------------------------------------------------------

GRPC_OK = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INFER = "/inference.GRPCInferenceService/ModelInfer"


@st.composite
def grpc_requests(draw: Any) -> bytes:
    """A ModelInferRequest (tritonclient's own message) with lying tensors, or junk bytes."""
    if draw(st.integers(0, 3)) == 0:
        return mutate(draw(st.sampled_from(GOOD_GRPC)), draw)
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["blazeface", "blazeface.raw", "nope", ""]))
    )
    for _ in range(draw(st.integers(0, 3))):
        t = request.inputs.add(
            name=draw(st.sampled_from(["image", "input:0", ""])),
            datatype=draw(st.sampled_from([*DATATYPES, "BF16", ""])),
            shape=draw(st.lists(st.integers(-3, 2**40) | st.sampled_from([1, 128, 3]), max_size=5)),
        )
        if draw(st.booleans()):
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        if draw(st.booleans()):
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    return request.SerializeToString()


def _good_grpc() -> list[bytes]:
    raw = service_pb2.ModelInferRequest(model_name="blazeface.raw")
    raw.inputs.add(name="input:0", datatype="FP32", shape=[1, 128, 128, 3])
    raw.raw_input_contents.append(GOOD_RAW)
    image = service_pb2.ModelInferRequest(model_name="blazeface")
    image.inputs.add(name="image", datatype="BYTES", shape=[1])
    image.raw_input_contents.append(struct.pack("<I", len(IMAGE)) + IMAGE)
    return [raw.SerializeToString(), image.SerializeToString()]


GOOD_GRPC = _good_grpc()


@pytest.fixture
async def grpc_target(face_repo: Path) -> AsyncIterator[str]:
    settings = settings_for(face_repo, max_frame_bytes=64 * 1024, max_infer_bytes=1 << 20)
    async with grpc_gateway(settings) as (_, _, where):
        yield where


@pytest.mark.integration
@settings(fuzz, max_examples=120)
@given(body=grpc_requests())
async def test_model_infer_answers_any_message_with_a_status_not_a_crash(
    grpc_target: str, body: bytes
) -> None:
    """Malformed protobuf and tensors with lying shapes and sizes: a status code saying what
    is wrong (INVALID_ARGUMENT for bytes that are no message at all), never UNKNOWN or
    INTERNAL, and the next good request is served."""
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        call = channel.unary_unary(INFER)  # bytes in, bytes out
        try:
            await call(body, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            code = e.code()
            assert code in GRPC_OK, (code, e.details())
        reply = await call(GOOD_GRPC[0], timeout=60)
        assert service_pb2.ModelInferResponse.FromString(reply).outputs
