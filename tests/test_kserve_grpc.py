"""KServe v2 over gRPC, driven by Triton's own client (`tritonclient.grpc`) and by stubs of
tritonclient's own service definition: our proto's field numbers are the protocol's, the
pipeline finds the face, the raw form answers what onnxruntime answers, errors are status
codes, and a ModelStreamInfer stream answers every request exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edge.transports.grpc.gen import grpc_predict_v2_pb2 as ours
from tests.conftest import settings_for
from tests.grpcclient import grpc_gateway
from tests.pace import deadline, poll
from tests.test_kserve import FACE_BOX, NO_RATE_LIMITS, onnxruntime_outputs

pytestmark = pytest.mark.integration


@pytest.fixture
async def target(face_repo: Path) -> AsyncIterator[str]:
    settings = settings_for(face_repo, **NO_RATE_LIMITS)
    async with grpc_gateway(settings) as (_, _, where):
        yield where


def image_input(data: bytes) -> triton.InferInput:
    i = triton.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(np.array([data], dtype=object))
    return i


def raw_input(x: np.ndarray) -> triton.InferInput:
    i = triton.InferInput("input:0", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def _repeated(field: Any) -> bool:
    """Whether a field is repeated, on protobuf 4 (`label`) and on 6 and later (`is_repeated`,
    where `label` is deprecated)."""
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


@pytest.mark.unit
def test_our_proto_numbers_every_field_as_tritonclient_does() -> None:
    """Guards against a field number or type that differs from the protocol's: a stock client
    would then send or read the wrong field without any error."""

    def fields(message: Any) -> dict[str, tuple[int, int, bool]]:
        out = {f.name: (f.number, f.type, _repeated(f)) for f in message.fields}
        for nested in message.nested_types:
            if not nested.GetOptions().map_entry:
                out.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return out

    theirs = service_pb2.DESCRIPTOR
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        assert fields(message) == fields(theirs.message_types_by_name[name]), name
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their_service = theirs.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = their_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
        assert method.client_streaming == other.client_streaming
        assert method.server_streaming == other.server_streaming


async def test_readiness_metadata_and_both_ways_in(target: str, face_jpeg: bytes) -> None:
    """The calls a Triton user makes first, then the pipeline's face and raw outputs equal to
    onnxruntime's on the same tensor."""
    x = np.random.default_rng(5).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)

    def check() -> None:
        c = triton.InferenceServerClient(target)
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("blazeface") and c.is_model_ready("blazeface.raw", "1")
        assert not c.is_model_ready("nope") and not c.is_model_ready("blazeface", "9")
        assert c.get_server_metadata().name == "edge-gateway"
        meta = c.get_model_metadata("blazeface.raw", as_json=True)
        assert meta["inputs"] == [
            {"name": "input:0", "datatype": "FP32", "shape": ["1", "128", "128", "3"]}
        ]
        meta = c.get_model_metadata("blazeface", as_json=True)
        assert [o["name"] for o in meta["outputs"]] == [
            "boxes", "scores", "labels", "keypoints", "result"
        ]  # fmt: skip
        r = c.infer("blazeface", [image_input(face_jpeg)], request_id="face-1")
        assert r.get_response().id == "face-1"
        assert r.as_numpy("boxes")[0].tolist() == pytest.approx(FACE_BOX, abs=6)
        assert r.as_numpy("labels").tolist() == [b"face"]
        assert r.as_numpy("keypoints").shape == (1, 6, 2)
        r = c.infer("blazeface.raw", [raw_input(x)])
        for name, want in onnxruntime_outputs("blazeface", x).items():
            np.testing.assert_allclose(r.as_numpy(name), want, rtol=1e-5, atol=1e-5)
        c.close()

    await asyncio.to_thread(check)


async def test_typed_contents_are_taken_too(target: str) -> None:
    """A client that sends `contents.fp32_contents` instead of raw_input_contents (built
    here with tritonclient's own messages and stub) gets the same answer."""
    x = np.random.default_rng(9).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="input:0", datatype="FP32", shape=[1, 128, 128, 3]
    )
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request = service_pb2.ModelInferRequest(
        model_name="blazeface.raw",
        inputs=[tensor],
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="Identity_2:0")],
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = await stub.ModelInfer(request, timeout=deadline(10))
    assert [o.name for o in response.outputs] == ["Identity_2:0"]
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(response.outputs[0].shape)
    want = onnxruntime_outputs("blazeface", x)["Identity_2:0"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


async def test_errors_are_status_codes(target: str) -> None:
    def check() -> None:
        c = triton.InferenceServerClient(target)
        for call, code in (
            (lambda: c.infer("nope", [image_input(b"x")]), "StatusCode.NOT_FOUND"),
            (
                lambda: c.infer("blazeface.raw", [raw_input(np.zeros((1, 64, 64, 3), np.float32))]),
                "StatusCode.INVALID_ARGUMENT",
            ),
            (
                lambda: c.infer("blazeface", [image_input(b"not an image")]),
                "StatusCode.INVALID_ARGUMENT",
            ),
            (lambda: c.get_model_metadata("nope"), "StatusCode.NOT_FOUND"),
        ):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert e.value.status() == code, e.value
        c.close()

    await asyncio.to_thread(check)


async def test_auth_on_grpc(face_repo: Path, face_jpeg: bytes) -> None:
    token = "g" * 32
    async with grpc_gateway(settings_for(face_repo, auth_tokens=(token,))) as (_, _, where):

        def check() -> None:
            c = triton.InferenceServerClient(where)
            with pytest.raises(InferenceServerException) as e:
                c.infer("blazeface", [image_input(face_jpeg)])
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            bearer = {"authorization": f"Bearer {token}"}
            r = c.infer("blazeface", [image_input(face_jpeg)], headers=bearer)
            assert r.as_numpy("boxes").shape == (1, 4)
            c.close()

        await asyncio.to_thread(check)


async def test_stream_answers_every_request_once(
    target: str, face_jpeg: bytes, noface_jpeg: bytes
) -> None:
    """Guards against a lost or doubled answer on Triton's streaming call: 80 requests sent
    as fast as the client goes, each answered exactly once (a result, or an error naming its
    id when a newer request superseded it), results in the order sent; a request with the
    wrong input in the middle is answered with an error and the stream goes on."""
    n = 80
    answers: dict[str, list[str]] = {}
    order: list[int] = []
    faces: dict[int, int] = {}
    lock = threading.Lock()

    def callback(result: Any, error: Any) -> None:
        with lock:
            if error is not None:
                rid = str(error).split("'")[1]
                answers.setdefault(rid, []).append(str(error))
            else:
                rid = result.get_response().id
                answers.setdefault(rid, []).append("result")
                order.append(int(rid))
                faces[int(rid)] = result.as_numpy("boxes").shape[0]

    def run() -> None:
        c = triton.InferenceServerClient(target)
        c.start_stream(callback)
        for i in range(n):
            inp = image_input(face_jpeg if i % 2 else noface_jpeg)
            if i == n // 2:  # a request the stream cannot take: answered at once, in turn
                inp = triton.InferInput("picture", [1], "BYTES")
                inp.set_data_from_numpy(np.array([face_jpeg], dtype=object))
            c.async_stream_infer("blazeface", [inp], request_id=str(i))
        poll(lambda: sum(map(len, answers.values())) >= n, deadline(n), lambda: answers)
        c.stop_stream()
        c.close()

    await asyncio.to_thread(run)
    assert sorted(map(int, answers)) == list(range(n))
    assert all(len(v) == 1 for v in answers.values()), answers
    assert "bad_message" in answers[str(n // 2)][0] and "'picture'" in answers[str(n // 2)][0]
    kinds = {v[0] if v[0] == "result" else v[0].split(": ", 1)[1][:7] for v in answers.values()}
    assert kinds <= {"result", "dropped", "bad_mes"}, kinds
    assert order == sorted(order) and answers[str(n - 1)] == ["result"]
    assert faces == {i: i % 2 for i in order}  # each result is its own frame's


async def test_stream_of_raw_rows_answers_each_with_its_own_outputs(target: str) -> None:
    """The raw form on a stream: each request one row, answered once; a result carries the
    outputs of its own input, not a neighbour's (checked against onnxruntime by id)."""
    n = 30
    rng = np.random.default_rng(21)
    xs = [rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32) for _ in range(n)]
    answers: dict[str, list[Any]] = {}
    lock = threading.Lock()

    def callback(result: Any, error: Any) -> None:
        with lock:
            if error is not None:
                answers.setdefault(str(error).split("'")[1], []).append(str(error))
            else:
                rid = result.get_response().id
                answers.setdefault(rid, []).append(result.as_numpy("Identity_3:0"))

    def run() -> None:
        c = triton.InferenceServerClient(target)
        c.start_stream(callback)
        for i, x in enumerate(xs):
            c.async_stream_infer("blazeface.raw", [raw_input(x)], request_id=str(i))
        poll(lambda: sum(map(len, answers.values())) >= n, deadline(n), lambda: answers)
        c.stop_stream()
        c.close()

    await asyncio.to_thread(run)
    assert sorted(map(int, answers)) == list(range(n))
    assert all(len(v) == 1 for v in answers.values())
    results = {int(k): v[0] for k, v in answers.items() if not isinstance(v[0], str)}
    assert n - 1 in results  # the last request is never superseded
    for i, got in results.items():
        want = onnxruntime_outputs("blazeface", xs[i])["Identity_3:0"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    dropped = [v[0] for v in answers.values() if isinstance(v[0], str)]
    assert all("dropped" in d for d in dropped), dropped


async def test_a_stream_answers_junk_bytes_and_goes_on(target: str, face_jpeg: bytes) -> None:
    """Bytes that are no protobuf message, in the middle of a stream: that request is
    answered with an error_message, the ones around it with results."""
    good = service_pb2.ModelInferRequest(model_name="blazeface", id="a")
    good.inputs.add(name="image", datatype="BYTES", shape=[1])
    good.raw_input_contents.append(len(face_jpeg).to_bytes(4, "little") + face_jpeg)
    last = service_pb2.ModelInferRequest()
    last.CopyFrom(good)
    last.id = "c"
    replies = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
            timeout=deadline(10)
        )
        for body in (good.SerializeToString(), b"\xff\xff\xff", last.SerializeToString()):
            await call.write(body)
            replies.append(service_pb2.ModelStreamInferResponse.FromString(await call.read()))
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    assert [r.infer_response.id for r in replies] == ["a", "", "c"]
    assert "not a protobuf message" in replies[1].error_message
    assert not replies[0].error_message and not replies[2].error_message
