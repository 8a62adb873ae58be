"""What one request may cost a serving process (issue 23, points 3, 4 and 8), played as the
attack against a spawned gateway: the attacker gets a typed refusal, a legitimate client is
served meanwhile, /healthz answers before the attack is over, and memory comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest

from edge.transports.grpc.gen import grpc_predict_v2_pb2 as pb
from tests.conftest import GatewayProcess, free_port, wait_ready

pytestmark = pytest.mark.integration

GOOD = "good-token-0123456789abcdef"
Spawn = Callable[..., GatewayProcess]
SERVICE = "/inference.GRPCInferenceService/"


def _raw_input(values: str) -> bytes:
    """A blazeface.raw request whose data is `values`, a JSON list's text."""
    head = '{"inputs":[{"name":"input:0","datatype":"FP32","shape":[1,128,128,3],"data":'
    return (head + values + "}]}").encode()


async def _while_attacked(gw: GatewayProcess, attack: Awaitable[object]) -> int:
    """Run `attack`, asking /healthz all along; how many answers came before it ended."""
    task = asyncio.ensure_future(attack)
    answered = 0
    async with aiohttp.ClientSession() as http:
        while not task.done():
            async with http.get(gw.url + "/healthz") as r:
                assert r.status == 200
            answered += not task.done()
    await task
    return answered


async def test_kserve_json_bodies_cost_what_their_limits_allow(
    spawn_gateway: Spawn, face_repo: Path
) -> None:
    """A JSON body's parse must be bounded before it starts: 30 MB of empty arrays used to
    take the process from 160 MB to 900 MB (kept) and stall /healthz for seconds. JSON over
    max_json_bytes is 413, too many arrays or values, or too deep, is 400, all before
    json.loads; the largest JSON allowed is parsed off the loop, a few at a time."""
    gw = spawn_gateway(face_repo, {"EDGE_PROCESSES": "1", "EDGE_MAX_FPS_PER_CLIENT": "0"})
    await wait_ready(gw.url)
    largest = _raw_input("[" + ",".join(["0.12345678901234567"] * 49152) + "]")
    assert len(largest) < 1 << 20
    attacks = {
        "[" + ",".join(["[]"] * 300_000) + "]": (400, "arrays and objects"),
        "[" + ",".join(["0"] * 400_000) + "]": (400, "values"),
        "[" * 40 + "]" * 40: (400, "nested deeper"),
        "[" + "0," * (600_000) + "0]": (413, "larger than 1048576"),
    }
    url = gw.url + "/v2/models/blazeface.raw/infer"
    async with aiohttp.ClientSession() as http:

        async def post(body: bytes) -> tuple[int, str]:
            async with http.post(url, data=body) as r:
                return r.status, (await r.json())["error"] if r.status != 200 else ""

        assert await post(largest) == (200, "")  # warm: the model's first frame paid
        before = gw.rss_mb()

        async def burst() -> list[tuple[int, str]]:
            bodies = [largest] * 8 + [_raw_input(a) for a in attacks] * 2
            return await asyncio.gather(*(post(b) for b in bodies))

        for _ in range(3):
            answered = await _while_attacked(gw, burst())
            assert answered >= 1  # /healthz answered before the burst was over
        replies = await burst()
    assert replies[:8] == [(200, "")] * 8  # the largest allowed request: served
    for (status, message), (want, says) in zip(replies[8:], [*attacks.values()] * 2, strict=True):
        assert status == want and says in message, (status, message)
    grown = gw.rss_mb() - before
    print(f"RSS grew {grown:.1f} MB")
    assert grown < 150, f"RSS grew {grown:.0f} MB after 4 bursts"


async def test_grpc_reads_no_large_message_from_a_caller_without_a_token(
    spawn_gateway: Spawn, face_repo: Path
) -> None:
    """Sixteen 30 MiB unary calls with no token used to be read whole before UNAUTHENTICATED
    (+300 MB): the refusal now reads nothing. A small call (metadata) is held to a small
    limit where it is parsed, RESOURCE_EXHAUSTED; a caller with a token is served."""
    port = free_port()
    gw = spawn_gateway(
        face_repo, {"EDGE_PROCESSES": "1", "EDGE_AUTH_TOKENS": GOOD, "EDGE_GRPC_PORT": str(port)}
    )
    await wait_ready(gw.url)
    token = (("authorization", f"Bearer {GOOD}"),)
    raw = {"request_serializer": bytes, "response_deserializer": bytes}
    huge = pb.ModelInferRequest(model_name="blazeface", raw_input_contents=[b"\0" * (30 << 20)])
    body = huge.SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(SERVICE + "ModelInfer", **raw)
        meta = channel.unary_unary(SERVICE + "ServerMetadata", **raw)
        ready = channel.unary_unary(SERVICE + "ServerReady", **raw)
        assert pb.ServerReadyResponse.FromString(await ready(b"", metadata=token)).ready
        before = gw.rss_mb()
        for _ in range(2):
            calls = [infer(body) for _ in range(16)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            for e in results:
                assert isinstance(e, grpc.aio.AioRpcError), e
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
            assert pb.ServerReadyResponse.FromString(await ready(b"", metadata=token)).ready
        grown = gw.rss_mb() - before
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await meta(pb.ServerMetadataRequest().SerializeToString() + b"\x0a" * (1 << 20),
                       metadata=token)  # fmt: skip
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    print(f"RSS grew {grown:.1f} MB")
    assert grown < 200, f"RSS grew {grown:.0f} MB after 32 refused 30 MiB calls"


async def test_stream_typed_tensors_are_converted_off_the_event_loop(
    spawn_gateway: Spawn, face_repo: Path
) -> None:
    """ModelStreamInfer used to turn typed contents into Python values on the event loop:
    8 M fp32 values stalled /healthz for seconds. Now a count that does not fit the shape is
    refused before any conversion, and a large conversion runs on a thread in slices."""
    port = free_port()
    gw = spawn_gateway(
        face_repo,
        {"EDGE_PROCESSES": "1", "EDGE_GRPC_PORT": str(port), "EDGE_MAX_FPS_PER_CLIENT": "0"},
    )
    await wait_ready(gw.url)
    tensor = pb.ModelInferRequest.InferInputTensor
    wrong = tensor(name="input:0", datatype="FP32", shape=[1, 128, 128, 3])
    wrong.contents.fp32_contents.extend([0.5] * 4_000_000)
    right = tensor(name="input:0", datatype="FP32", shape=[2000, 128, 128, 3])
    right.contents.fp32_contents.extend([0.5] * (2000 * 128 * 128 * 3 // 16))
    right.shape[:] = [125, 128, 128, 3]
    requests = [
        pb.ModelInferRequest(model_name="blazeface.raw", id=str(i), inputs=[t])
        for i, t in enumerate([wrong, right])
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.stream_stream(
            SERVICE + "ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )

        async def stream() -> list[pb.ModelStreamInferResponse]:
            return [r async for r in stub(iter(requests))]

        replies = await asyncio.wait_for(stream(), 600)
        answered = await _while_attacked(gw, stream())
    assert answered >= 1
    assert [r.infer_response.id for r in replies] == ["0", "1"]
    assert "values, but shape" in replies[0].error_message
    assert "rows" in replies[1].error_message  # converted, then refused: one row per request
