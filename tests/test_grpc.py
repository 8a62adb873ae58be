"""The gRPC InferenceService as a client built from the original contract sees it: Predict and
PredictStream against the real server, real photos, BlazeFace (docs/protocols.md)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from edge.transports.grpc.gen import inference_pb2 as ours
from tests import grpcclient as gc
from tests.conftest import ROOT, settings_for
from tests.operations_util import scrape, total
from tests.pace import deadline, wait_until
from tests.wsclient import Books

pytestmark = pytest.mark.integration
Response = ours.InferenceResponse


#: results a stream may have waiting to be written: more than any test here sends frames, so
#: a client that reads, on however busy a machine (client and server share one event loop
#: here, and a loaded one writes each of a burst's drop notices slowly), never sees its newest
#: frames dropped `overload` (tests/test_grpc_limits.py tests that bound)
BACKLOG = 256


@pytest.fixture
async def gateway(face_repo: Path) -> AsyncIterator[tuple[str, Any, str]]:
    async with gc.grpc_gateway(settings_for(face_repo, max_pending_results=BACKLOG)) as running:
        yield running


async def test_predict_from_the_original_contract_finds_the_face(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    """A client generated from the original proto gets an answer it can parse, and the bytes
    hold the same face, box for box, as the HTTP infer call finds."""
    url, _, target = gateway
    async with grpc.aio.insecure_channel(target) as channel:
        response = await gc.stub(channel).Predict(gc.request(face_jpeg), timeout=deadline())
    assert list(response.scores) == [] and response.label == 0  # a detector: no classes
    r = gc.full(response)
    assert r.status == Response.RESULT and r.model == "blazeface@1"
    assert (r.width, r.height) == (512, 512)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/models/blazeface/infer", data=face_jpeg) as reply,
    ):
        expected = (await reply.json())["detections"]
    assert len(r.detections) == len(expected) == 1
    box = r.detections[0].box
    assert [box.x1, box.y1, box.x2, box.y2] == pytest.approx(expected[0]["box"], abs=0.06)
    assert len(r.detections[0].keypoints) == 6 and r.detections[0].label == "face"
    assert r.timing.total_ms >= r.timing.inference_ms > 0


async def test_predict_errors_are_status_codes(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    """A unary call that cannot be answered ends with a code a gRPC client acts on: junk
    image INVALID_ARGUMENT (bad_frame), unknown model NOT_FOUND; the server goes on."""
    _, _, target = gateway
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gc.stub(channel)
        for payload, model, code, words in (
            (b"\xff\xd8 not really a jpeg", "", grpc.StatusCode.INVALID_ARGUMENT, "bad_frame"),
            (b"", "", grpc.StatusCode.INVALID_ARGUMENT, "bad_frame"),
            (face_jpeg, "nosuch", grpc.StatusCode.NOT_FOUND, "unknown_model"),
            (face_jpeg, "blazeface@9", grpc.StatusCode.NOT_FOUND, "unknown_model"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Predict(gc.request(payload, model), timeout=deadline())
            assert e.value.code() == code and words in (e.value.details() or "")
        ok = await stub.Predict(gc.request(face_jpeg, "blazeface@1"), timeout=deadline())
        assert gc.full(ok).detections


async def test_many_frames_on_a_stream_each_answered_once_results_in_order(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    """PredictStream from the original stub: every request answered by exactly one response
    naming its seq, results in increasing seq order, the newest frame's result last, then a
    clean end (OK)."""
    url, _, target = gateway
    n = 120
    books = Books()
    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream(gc.paced(books, face_jpeg, n))
        order: list[Response] = []
        async for response in call:
            order.append(gc.full(response))
            books.record(gc.as_message(order[-1]))
        assert await call.code() == grpc.StatusCode.OK
    assert len(order) == n
    assert books.unanswered() == [] and books.answered_twice() == []
    results = [r.seq for r in order if r.status == Response.RESULT]
    assert results == sorted(results) and results[-1] == n - 1
    assert {r.reason for r in order if r.status == Response.DROPPED} <= {"stale"}
    assert all(r.detections for r in order if r.status == Response.RESULT)
    async with aiohttp.ClientSession() as http:
        metrics = await scrape(http, url)
    assert total(metrics, "edge_frames_received_total", transport="grpc") == n
    processed = total(metrics, "edge_frames_processed_total", transport="grpc")
    dropped = total(metrics, "edge_frames_dropped_total", transport="grpc")
    assert processed == len(results) and processed + dropped == n


async def test_a_stream_that_asks_for_merged_drops_has_every_frame_answered_once(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    """merge_dropped: a burst of frames (most of them superseded) is still answered once per
    frame, counting every seq of a merged DROPPED response, each response's `seq` the first
    of its `seqs`; the metrics count each frame once."""
    url, _, target = gateway
    n = 120
    books = Books()

    async def requests() -> AsyncIterator[Any]:
        async for r in gc.paced(books, face_jpeg, n):
            yield ours.InferenceRequest(payload=r.payload, merge_dropped=True)

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            "/inference.InferenceService/PredictStream",
            ours.InferenceRequest.SerializeToString,
            Response.FromString,
        )(requests())
        responses = []
        async for response in call:
            responses.append(response)
            books.record(gc.as_message(response))
        assert await call.code() == grpc.StatusCode.OK
    assert books.unanswered() == [] and books.answered_twice() == []
    dropped = [r for r in responses if r.status == Response.DROPPED]
    assert all(r.seqs and r.seq == r.seqs[0] for r in dropped)
    async with aiohttp.ClientSession() as http:
        metrics = await scrape(http, url)
    counted = total(metrics, "edge_frames_processed_total", transport="grpc")
    counted += total(metrics, "edge_frames_dropped_total", transport="grpc")
    assert counted == n == sum(len(r.seqs) for r in dropped) + len(responses) - len(dropped)


async def test_one_request_then_half_close_gets_its_answer_and_a_clean_end(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    """A server-streaming style client: one request, half-close, then reads. It gets the
    frame's result (not `closed`), and status OK."""
    _, _, target = gateway
    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream()
        await call.write(gc.request(face_jpeg))
        await call.done_writing()
        answers = [gc.full(r) async for r in call]
        assert await call.code() == grpc.StatusCode.OK
    assert [(r.seq, r.status) for r in answers] == [(0, Response.RESULT)]
    assert answers[0].detections


async def test_a_stream_that_sends_nothing_ends_cleanly(gateway: tuple[str, Any, str]) -> None:
    """A client that opens PredictStream and half-closes at once gets no response and OK."""
    _, _, target = gateway
    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream()
        await call.done_writing()
        assert [r async for r in call] == []
        assert await call.code() == grpc.StatusCode.OK


async def test_request_settings_and_model_switches_apply_from_their_frame_on(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    """The new request fields are the WebSocket's config: a threshold above the face's score
    empties the detections from that frame on; a bad value or an unknown model answers that
    frame ERROR and the stream goes on with what it had."""
    _, _, target = gateway

    def req(**kw: Any) -> ours.InferenceRequest:
        return ours.InferenceRequest(payload=face_jpeg, **kw)

    steps = [
        req(),
        req(threshold=0.999),
        req(),  # the threshold stays
        req(threshold=1.5),
        req(model_id="nosuch"),
        req(model_id="blazeface@1", threshold=0.5, max_frame_age_ms=60_000),
        req(max_frame_age_ms=-1),
    ]
    answers: list[Response] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            "/inference.InferenceService/PredictStream",
            request_serializer=ours.InferenceRequest.SerializeToString,
            response_deserializer=Response.FromString,
        )()
        for step in steps:  # one at a time: each answered before the next, none superseded
            await call.write(step)
            answers.append(await asyncio.wait_for(call.read(), deadline()))
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    got = [(r.seq, r.status, len(r.detections), r.code) for r in answers]
    assert got == [
        (0, Response.RESULT, 1, ""),
        (1, Response.RESULT, 0, ""),
        (2, Response.RESULT, 0, ""),
        (3, Response.ERROR, 0, "bad_message"),
        (4, Response.ERROR, 0, "unknown_model"),
        (5, Response.RESULT, 1, ""),
        (6, Response.ERROR, 0, "bad_message"),
    ]


async def test_an_unknown_model_on_the_first_request_ends_the_stream_not_found(
    gateway: tuple[str, Any, str], face_jpeg: bytes
) -> None:
    _, _, target = gateway
    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream()
        await call.write(gc.request(face_jpeg, "nosuch"))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call.read()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_junk_frames_are_answered_error_and_the_stream_goes_on(
    gateway: tuple[str, Any, str], face_jpeg: bytes, noface_jpeg: bytes
) -> None:
    """Junk, truncated and empty images get ERROR bad_frame with their seq; good frames
    between them are served."""
    _, _, target = gateway
    frames = [face_jpeg, b"junk", face_jpeg[: len(face_jpeg) // 3], b"", noface_jpeg, face_jpeg]
    answers: list[Response] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream()
        for data in frames:
            await call.write(gc.request(data))
            answers.append(gc.full(await asyncio.wait_for(call.read(), deadline())))
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    assert [r.seq for r in answers] == list(range(len(frames)))
    kinds = [(r.status, r.code) for r in answers]
    assert kinds[0] == kinds[4] == kinds[5] == (Response.RESULT, "")
    assert kinds[1:4] == [(Response.ERROR, "bad_frame")] * 3
    assert not answers[4].detections and answers[5].detections


# -- classification: the original contract's scores and label ------------------------------
@pytest.fixture(scope="module")
def colour_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier whose logits are the mean red, green and blue of the frame."""
    root = tmp_path_factory.mktemp("colour-repo")
    (root / "colours" / "1").mkdir(parents=True)
    (root / "colours" / "model.toml").write_text(
        'task = "classification"\ninput = [32, 32]\nlayout = "nchw"\n'
        'labels = ["red", "green", "blue"]\nthreshold = 0.0\n'
        "mean = [0.0, 0.0, 0.0]\nstd = [64.0, 64.0, 64.0]\n\n[options]\ntop_k = 3\n"
    )
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "colours",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, root / "colours" / "1" / "model.onnx")
    return root


def solid(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), rgb, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def test_classification_fills_scores_and_label(colour_repo: Path) -> None:
    """For a classifier the original fields carry the answer: `label` is the best class's
    index and `scores` the reported classes' scores, best first."""
    settings = settings_for(colour_repo, default_model="colours")
    async with (
        gc.grpc_gateway(settings) as (_, _, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = gc.stub(channel)
        for rgb, label in (((230, 20, 20), 0), ((10, 200, 30), 1), ((0, 40, 250), 2)):
            response = await stub.Predict(gc.request(solid(rgb)), timeout=deadline())
            assert response.label == label, rgb
            assert len(response.scores) == 3
            assert list(response.scores) == sorted(response.scores, reverse=True)
            r = gc.full(response)
            assert r.classes[0].index == label
            assert r.classes[0].label == ["red", "green", "blue"][label]


async def test_metrics_count_grpc_streams(gateway: tuple[str, Any, str], face_jpeg: bytes) -> None:
    """edge_active_streams{transport="grpc"} counts an open PredictStream, and falls back."""
    url, app, target = gateway
    async with grpc.aio.insecure_channel(target) as channel:
        call = gc.stub(channel).PredictStream()
        await call.write(gc.request(face_jpeg))
        await asyncio.wait_for(call.read(), deadline())
        async with aiohttp.ClientSession() as http:
            text = await scrape(http, url)
        assert total(text, "edge_active_streams", transport="grpc") == 1
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK

    async def closed() -> bool:
        async with aiohttp.ClientSession() as http:
            return total(await scrape(http, url), "edge_active_streams", transport="grpc") == 0

    await wait_until(closed, deadline(), "the stream still counted as open")


async def test_the_documented_grpcio_example_runs(
    gateway: tuple[str, Any, str], face_jpeg: bytes, tmp_path: Path
) -> None:
    """docs/protocols.md's plain grpcio client, stubs generated from proto/ as the doc says,
    run as a user would (its own process) against the live gateway: it prints the face, and
    every one of its ten frames once."""
    _, _, target = gateway
    doc = (ROOT / "docs" / "protocols.md").read_text()
    section = doc.split("## gRPC InferenceService", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"localhost:8081"' in code
    (tmp_path / "example.py").write_text(code.replace('"localhost:8081"', f'"{target}"'))
    (tmp_path / "face.jpg").write_bytes(face_jpeg)
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(ROOT / "proto" / "inference.proto")]  # fmt: skip
    assert protoc.main(args) == 0
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=deadline(frames=11),
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines if ln.startswith("face")] == [["face", "face"]]
    frames = [ln.split() for ln in lines if ln.startswith("frame")]
    assert sorted(int(f[1]) for f in frames) == list(range(10))
    assert {f[2] for f in frames} <= {"RESULT", "DROPPED"} and frames[-1][2] == "RESULT"
