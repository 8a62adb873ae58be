"""KServe v2 (Open Inference Protocol) over REST, driven by Triton's own client
(`tritonclient.http`), which nobody here wrote: what it accepts is the protocol. The pipeline
form finds the face in a real photo; the raw form answers what onnxruntime answers on the same
tensor; bad tensors are refused with the protocol's errors before the model is touched."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, running, settings_for
from tests.models_fixture import loaded
from tests.operations_util import scrape, total
from tests.pace import deadline

pytestmark = pytest.mark.integration

FACE_BOX = [179, 82, 273, 176]  # astronaut.png, as tests/test_blazeface.py finds it
NO_RATE_LIMITS = {"max_fps_per_stream": 0, "max_fps_per_client": 0}


@pytest.fixture
async def server(face_repo: Path) -> AsyncIterator[str]:
    """The gateway with BlazeFace; the address tritonclient takes (host:port)."""
    settings = settings_for(face_repo, max_frame_bytes=256 * 1024, **NO_RATE_LIMITS)
    async with running(settings) as (url, _):
        yield url.removeprefix("http://")


def client(host: str, **kw: Any) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(host, network_timeout=deadline(10), **kw)


def image_input(data: bytes) -> triton.InferInput:
    i = triton.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(np.array([data], dtype=object))
    return i


def raw_input(x: np.ndarray, binary: bool = True, name: str = "input:0") -> triton.InferInput:
    i = triton.InferInput(name, list(x.shape), triton.np_to_triton_dtype(x.dtype))
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def onnxruntime_outputs(model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    _, session = loaded(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


async def test_health_readiness_and_metadata(server: str) -> None:
    """Guards against probes or metadata a stock client cannot read, or that disagree with
    the ONNX model the gateway serves."""

    def check() -> None:
        c = client(server)
        assert c.is_server_live() and c.is_server_ready()
        for name in ("blazeface", "blazeface.raw"):
            assert c.is_model_ready(name) and c.is_model_ready(name, "1")
        assert not c.is_model_ready("nope") and not c.is_model_ready("blazeface", "2")
        meta = c.get_server_metadata()
        assert meta["name"] == "edge-gateway" and "binary_tensor_data" in meta["extensions"]
        pipeline = c.get_model_metadata("blazeface")
        assert pipeline["versions"] == ["1"]
        assert pipeline["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in pipeline["outputs"]] == [
            ("boxes", "FP32", [-1, 4]),
            ("scores", "FP32", [-1]),
            ("labels", "BYTES", [-1]),
            ("keypoints", "FP32", [-1, 6, 2]),
            ("result", "BYTES", [1]),
        ]
        raw = c.get_model_metadata("blazeface.raw", "1")
        _, session = loaded("blazeface")
        assert raw["inputs"] == [
            {"name": i.name, "datatype": "FP32", "shape": i.shape} for i in session.get_inputs()
        ]
        assert [o["name"] for o in raw["outputs"]] == [o.name for o in session.get_outputs()]
        assert [o["shape"] for o in raw["outputs"]] == [o.shape for o in session.get_outputs()]
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("nope")
        assert e.value.status() == "404"

    await asyncio.to_thread(check)


@pytest.mark.parametrize("binary_outputs", [True, False])
async def test_pipeline_finds_the_face(server: str, face_jpeg: bytes, binary_outputs: bool) -> None:
    """Guards against the pipeline form losing or misplacing what the WebSocket would say:
    the face box in frame pixels, its keypoints, and the result JSON beside the tensors."""

    def infer() -> triton.InferResult:
        outputs = [
            triton.InferRequestedOutput(n, binary_data=binary_outputs)
            for n in ("boxes", "scores", "labels", "keypoints", "result")
        ]
        return client(server).infer("blazeface", [image_input(face_jpeg)], outputs=outputs)

    r = await asyncio.to_thread(infer)
    boxes = r.as_numpy("boxes")
    assert boxes.shape == (1, 4) and boxes[0].tolist() == pytest.approx(FACE_BOX, abs=6)
    assert r.as_numpy("scores")[0] > 0.5
    labels = r.as_numpy("labels").tolist()
    assert labels in ([b"face"], ["face"])
    assert r.as_numpy("keypoints").shape == (1, 6, 2)
    result = r.as_numpy("result")[0]
    message = json.loads(result if isinstance(result, str) else result.decode())
    assert message["type"] == "result" and message["model"] == "blazeface@1"
    assert message["detections"][0]["box"] == pytest.approx(boxes[0].tolist(), abs=1e-3)
    assert r.get_response()["model_version"] == "1"


async def test_pipeline_without_a_face_and_all_outputs_binary(
    server: str, noface_jpeg: bytes
) -> None:
    """No outputs asked for: every output comes, in binary, empty tensors shaped [0, ...]."""
    r = await asyncio.to_thread(
        lambda: client(server).infer("blazeface", [image_input(noface_jpeg)])
    )
    assert r.as_numpy("boxes").shape == (0, 4)
    assert r.as_numpy("keypoints").shape == (0, 6, 2)
    assert r.as_numpy("labels").shape == (0,)


async def test_pipeline_json_with_base64_image(server: str, face_jpeg: bytes) -> None:
    """The JSON-only form of the pipeline: an image is not UTF-8 text, so it goes as base64."""
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(face_jpeg).decode()],
                "parameters": {"content_type": "base64"},
            }
        ],
        "parameters": {"threshold": 0.6},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://{server}/v2/models/blazeface/infer", json=body) as r:
            assert r.status == 200, await r.text()
            reply = await r.json()
    boxes = next(o for o in reply["outputs"] if o["name"] == "boxes")
    assert boxes["shape"] == [1, 4] and boxes["data"] == pytest.approx(FACE_BOX, abs=6)


@pytest.mark.parametrize("binary", [True, False])
async def test_raw_matches_onnxruntime(server: str, binary: bool) -> None:
    """Guards against the raw form mangling tensors on the way in or out (byte order, row
    order, the batch axis): the same tensor through onnxruntime directly gives the same."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)

    def infer() -> triton.InferResult:
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in EXPECTED_NAMES]
        return client(server).infer("blazeface.raw", [raw_input(x, binary)], outputs=outputs)

    r = await asyncio.to_thread(infer)
    for name, want in onnxruntime_outputs("blazeface", x).items():
        got = r.as_numpy(name)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


EXPECTED_NAMES = ["Identity:0", "Identity_1:0", "Identity_2:0", "Identity_3:0"]


async def test_raw_rows_batch_with_each_other(text_repo: Path) -> None:
    """A batching model (the text detector, max_batch 2): a request of two rows, and several
    requests at once, whose frames the scheduler batches together; each row gets its own
    outputs back, none another's."""
    settings = settings_for(text_repo, **NO_RATE_LIMITS)
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-1, 1, (2, 3, 480, 640)).astype(np.float32) for _ in range(3)]
    async with running(settings) as (url, _):
        c = triton_aio.InferenceServerClient(url.removeprefix("http://"))
        try:
            results = await asyncio.gather(
                *(c.infer("ppocr_det.raw", [raw_input(x, name="x")]) for x in xs)
            )
        finally:
            await c.close()
    for x, r in zip(xs, results, strict=True):
        want = onnxruntime_outputs("ppocr_det", x)["fetch_name_0"]
        np.testing.assert_allclose(r.as_numpy("fetch_name_0"), want, rtol=1e-4, atol=1e-4)


async def test_many_concurrent_infers_are_each_answered_with_their_own_result(
    server: str, face_jpeg: bytes, noface_jpeg: bytes
) -> None:
    """Guards against answers crossing between concurrent requests, or lost ones: 48 at once,
    pipeline and raw mixed, each answered once with what its own input gives; the metrics
    count them under transport="kserve"."""
    rng = np.random.default_rng(11)
    n = 48
    xs = [rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32) for _ in range(n // 2)]
    frames = [face_jpeg if i % 2 else noface_jpeg for i in range(n // 2)]
    c = triton_aio.InferenceServerClient(server)
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, f"http://{server}")
        try:
            raw = [c.infer("blazeface.raw", [raw_input(x)]) for x in xs]
            pipe = [c.infer("blazeface", [image_input(f)]) for f in frames]
            results = await asyncio.wait_for(asyncio.gather(*raw, *pipe), deadline(n))
        finally:
            await c.close()
        after = await scrape(http, f"http://{server}")
    for x, r in zip(xs, results[: n // 2], strict=True):
        want = onnxruntime_outputs("blazeface", x)
        np.testing.assert_allclose(r.as_numpy("Identity:0"), want["Identity:0"], atol=1e-5)
    for f, r in zip(frames, results[n // 2 :], strict=True):
        assert r.as_numpy("boxes").shape[0] == (1 if f is face_jpeg else 0)
    processed = total(after, "edge_frames_processed_total", transport="kserve") - total(
        before, "edge_frames_processed_total", transport="kserve"
    )
    assert processed == n


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, **headers: str
) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def binary_body(inputs: list[dict], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


async def test_bad_requests_get_protocol_errors_before_the_model_runs(
    server: str, face_jpeg: bytes
) -> None:
    """Guards against a bad tensor reaching a worker (or crashing one): each is a 4xx with
    {"error": ...} naming what is wrong, and no frame is counted as received."""
    url = f"http://{server}/v2/models"
    x = np.zeros((1, 128, 128, 3), np.float32)
    raw = x.tobytes()

    def inp(shape: list[int], datatype: str = "FP32", size: int = len(raw)) -> dict:
        return {
            "name": "input:0",
            "datatype": datatype,
            "shape": shape,
            "parameters": {"binary_data_size": size},
        }

    cases: list[tuple[str, bytes, dict[str, str], int, str]] = []

    def case(path: str, body: tuple[bytes, dict[str, str]], status: int, words: str) -> None:
        cases.append((path, body[0], body[1], status, words))

    flat = raw[: len(raw) // 3]
    case(
        "blazeface.raw", binary_body([inp([1, 128, 128], size=len(flat))], flat), 400, "wrong shape"
    )
    case("blazeface.raw", binary_body([inp([2, 128, 128, 3])], raw), 400, "needs")
    case("blazeface.raw", binary_body([inp([1, 128, 128, 3], "FP64", len(raw))], raw), 400, "needs")
    x64 = np.zeros((1, 128, 128, 3), np.float64).tobytes()
    case(
        "blazeface.raw",
        binary_body([inp([1, 128, 128, 3], "FP64", len(x64))], x64),
        400,
        "datatype",
    )
    case(
        "blazeface.raw",
        binary_body([inp([1, 128, 128, 3], size=len(raw) + 8)], raw),
        400,
        "past the body",
    )
    case("blazeface.raw", binary_body([inp([1, 128, 128, 3])], raw[:-4]), 400, "past the body")
    case("blazeface.raw", binary_body([inp([1, 128, 128, 3])], raw, b"junk"), 400, "after")
    head = json.dumps({"inputs": [inp([1, 128, 128, 3])]}).encode()
    case(
        "blazeface.raw",
        (head + raw, {"Inference-Header-Content-Length": str(len(head) + len(raw) + 1)}),
        400,
        "only",
    )
    json_lie = {
        "name": "input:0",
        "datatype": "FP32",
        "shape": [1, 128, 128, 3],
        "data": [0.5] * 10,
    }
    case("blazeface.raw", (json.dumps({"inputs": [json_lie]}).encode(), {}), 400, "10 values")
    huge = struct.pack("<I", 2**31 - 1) + b"x" * 16
    img = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(huge)},
    }
    case("blazeface", binary_body([img], huge), 413, "more than")
    big = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x" * 300_000]}
    case("blazeface", (json.dumps({"inputs": [big]}).encode(), {}), 413, "more than")
    two = {"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
    case("blazeface", (json.dumps({"inputs": [two]}).encode(), {}), 400, "BYTES [1]")
    case("blazeface", (b"{not json", {}), 400, "not JSON")
    case("blazeface", (b"[]", {}), 400, "JSON object")
    case("nope", (b"{}", {}), 404, "no model")
    case("blazeface/versions/7", (b"{}", {}), 404, "no version")
    ok = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["ok"]}
    unknown_output = {"inputs": [ok], "outputs": [{"name": "nope"}]}
    case("blazeface", (json.dumps(unknown_output).encode(), {}), 400, "no output")
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, f"http://{server}")
        for path, body, headers, status, words in cases:
            got, reply = await post(http, f"{url}/{path}/infer", body, **headers)
            assert (got, words in reply.get("error", "")) == (status, True), (path, reply)
        after = await scrape(http, f"http://{server}")
        assert total(after, "edge_frames_received_total", transport="kserve") == total(
            before, "edge_frames_received_total", transport="kserve"
        )
        # an image that is not one is the pipeline's own answer: 400, after the decoder
        bad = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}
        got, reply = await post(
            http, f"{url}/blazeface/infer", json.dumps({"inputs": [bad]}).encode()
        )
        assert got == 400 and "bad image" in reply["error"]
        # and the server goes on serving
        r = await asyncio.to_thread(
            lambda: client(server).infer("blazeface", [image_input(face_jpeg)])
        )
        assert r.as_numpy("boxes").shape == (1, 4)


async def test_a_request_over_max_infer_bytes_is_refused(face_repo: Path) -> None:
    async with running(settings_for(face_repo, max_infer_bytes=64 * 1024)) as (url, _):
        async with aiohttp.ClientSession() as http:
            status, reply = await post(
                http, f"{url}/v2/models/blazeface.raw/infer", bytes(65 * 1024)
            )
    assert status == 413 and "larger than 65536" in reply["error"]


async def test_tritonclient_errors_name_the_problem(server: str) -> None:
    """What a Triton user sees for an unknown model or a wrong shape: the status and our
    message, through the client's own exception."""

    def check() -> None:
        c = client(server)
        with pytest.raises(InferenceServerException) as e:
            c.infer("nope", [image_input(b"x")])
        assert e.value.status() == "404"
        with pytest.raises(InferenceServerException) as e:
            c.infer("blazeface.raw", [raw_input(np.zeros((1, 64, 64, 3), np.float32))])
        assert e.value.status() == "400" and "128, 128, 3" in e.value.message()

    await asyncio.to_thread(check)


async def test_auth_guards_v2_but_not_its_health_probes(face_repo: Path, face_jpeg: bytes) -> None:
    """Guards against KServe being a way around the token: metadata and infer need it, the
    health probes (like /healthz) do not."""
    token = "k" * 32
    async with running(settings_for(face_repo, auth_tokens=(token,))) as (url, _):
        host = url.removeprefix("http://")

        def check() -> None:
            anonymous = client(host)
            assert anonymous.is_server_live() and anonymous.is_server_ready()
            for call in (
                lambda: anonymous.get_server_metadata(),
                lambda: anonymous.get_model_metadata("blazeface"),
                lambda: anonymous.infer("blazeface", [image_input(face_jpeg)]),
            ):
                with pytest.raises(InferenceServerException) as e:
                    call()
                assert e.value.status() == "401"
            bearer = {"Authorization": f"Bearer {token}"}
            r = client(host).infer("blazeface", [image_input(face_jpeg)], headers=bearer)
            assert r.as_numpy("boxes").shape == (1, 4)
            with pytest.raises(InferenceServerException) as e:
                client(host).infer(
                    "blazeface", [image_input(face_jpeg)], headers={"Authorization": "Bearer wrong"}
                )
            assert e.value.status() == "401"

        await asyncio.to_thread(check)


def kserve_example() -> str:
    """The tritonclient example of docs/protocols.md's KServe section."""
    text = (ROOT / "docs" / "protocols.md").read_text()
    section = text.split("## KServe v2 (Open Inference Protocol)", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_documented_example_runs(server: str, face_jpeg: bytes, tmp_path: Path) -> None:
    """Guards against docs that show a call the gateway does not answer: the example runs as
    a user would run it, in a process of its own, against a live gateway."""
    (tmp_path / "face.jpg").write_bytes(face_jpeg)
    code = kserve_example().replace("localhost:8080", server)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=tmp_path, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), deadline(10))
    text = out.decode()
    assert proc.returncode == 0, text
    assert "[b'face']" in text and "(1, 512, 1)" in text, text


async def test_kserve_through_two_serving_processes(
    spawn_gateway: Any, face_repo: Path, face_jpeg: bytes
) -> None:
    """With --processes 2 the supervisor hands each connection to a process and gRPC's port is
    shared: KServe over REST and over gRPC answers on fresh connections whichever process
    takes them, and one /metrics counts them all."""
    import tritonclient.grpc as triton_grpc

    from tests.conftest import free_port, wait_ready

    grpc_port = free_port()
    env = {"EDGE_PROCESSES": "2", "EDGE_GRPC_PORT": str(grpc_port), "EDGE_MAX_FPS_PER_CLIENT": "0"}
    gw = spawn_gateway(face_repo, env)
    await wait_ready(gw.url, within=deadline(200))
    host = gw.url.removeprefix("http://")

    def check() -> None:
        for _ in range(6):  # a new connection each time: either process may take it
            c = client(host, concurrency=1)
            assert c.is_server_ready()
            r = c.infer("blazeface", [image_input(face_jpeg)])
            assert r.as_numpy("boxes")[0].tolist() == pytest.approx(FACE_BOX, abs=6)
            c.close()
            g = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            assert g.is_server_ready()
            i = triton_grpc.InferInput("image", [1], "BYTES")
            i.set_data_from_numpy(np.array([face_jpeg], dtype=object))
            assert g.infer("blazeface", [i]).as_numpy("boxes").shape == (1, 4)
            g.close()

    await asyncio.to_thread(check)
    async with aiohttp.ClientSession() as http:
        samples = await scrape(http, gw.url)
    assert total(samples, "edge_frames_processed_total", transport="kserve") == 6
    assert total(samples, "edge_frames_processed_total", transport="kserve-grpc") == 6
