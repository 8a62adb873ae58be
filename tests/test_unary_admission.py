"""One admission for unary requests on every transport (issue #23, point 6), played against
the real gateway on 127.0.0.1: `/v1` infer, KServe REST, gRPC Predict and KServe gRPC
ModelInfer.

Guards against a transport that skips the per-client frame budget (KServe REST answered a
burst of 30 all 200 under `max_fps_per_client=2`) or the gateway's state (a draining gateway
answered `/v1` and KServe REST requests), and against a refusal some wire cannot say typed."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from edge.core.services import SERVICES
from tests import grpcclient as gc
from tests.conftest import settings_for
from tests.pace import deadline

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
BURST = 12
RATE = 2
#: what a client sees of one request: ("ok" | "refused" | something unexpected, detail)
Outcome = tuple[str, str]


def kserve_body(jpeg: bytes) -> dict:
    image = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "data": [base64.b64encode(jpeg).decode()],
        "parameters": {"content_type": "base64"},
    }
    return {"inputs": [image]}


def kserve_grpc_request(jpeg: bytes) -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1]
    )
    tensor.contents.bytes_contents.append(jpeg)
    return service_pb2.ModelInferRequest(model_name="blazeface", inputs=[tensor])


def callers(
    url: str, target: str, http: aiohttp.ClientSession, channel: grpc.aio.Channel, jpeg: bytes
) -> dict[str, Callable[[], Awaitable[Outcome]]]:
    """One request on each transport, as (outcome, detail): an HTTP refusal must carry
    Retry-After, a gRPC one its typed code."""
    predict = gc.stub(channel).Predict
    model_infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

    async def http_post(path: str, **kw: object) -> Outcome:
        async with http.post(f"{url}{path}", **kw) as r:  # type: ignore[arg-type]
            body = await r.json()
            if r.status == 200:
                return "ok", ""
            typed = r.status in (429, 503) and "Retry-After" in r.headers
            return ("refused" if typed else "unexpected"), f"{r.status} {body}"

    async def grpc_call(call: Callable[..., Awaitable[object]], request: object) -> Outcome:
        try:
            await call(request, timeout=deadline(frames=BURST))
        except grpc.aio.AioRpcError as e:
            typed = e.code() in (Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE)
            return ("refused" if typed else "unexpected"), f"{e.code()} {e.details()}"
        return "ok", ""

    return {
        "v1": lambda: http_post("/v1/models/blazeface/infer", data=jpeg),
        "kserve-rest": lambda: http_post("/v2/models/blazeface/infer", json=kserve_body(jpeg)),
        "grpc": lambda: grpc_call(predict, gc.request(jpeg)),
        "kserve-grpc": lambda: grpc_call(model_infer, kserve_grpc_request(jpeg)),
    }


async def test_the_client_budget_and_the_gate_hold_on_every_unary_transport(
    face_repo: Path, face_jpeg: bytes
) -> None:
    """With max_fps_per_client=2, a burst of 12 concurrent requests on each transport lets
    through at most the budget (a second's burst of 2, plus 2 for each second the burst took)
    and refuses the rest typed: 429 + Retry-After on HTTP, KServe's error body, gRPC
    RESOURCE_EXHAUSTED. Then a draining gateway refuses every transport alike."""
    settings = settings_for(face_repo, max_fps_per_stream=0, max_fps_per_client=RATE)
    async with (
        gc.grpc_gateway(settings) as (url, app, target),
        aiohttp.ClientSession() as http,
        grpc.aio.insecure_channel(target) as channel,
    ):
        ways = callers(url, target, http, channel, face_jpeg)
        for name, call in ways.items():
            await asyncio.sleep(1.0)  # the client's bucket (a second's burst) full again
            asked = time.monotonic()
            outcomes = await asyncio.gather(*(call() for _ in range(BURST)))
            took = time.monotonic() - asked
            kinds = [kind for kind, _ in outcomes]
            assert set(kinds) <= {"ok", "refused"}, (name, outcomes)
            assert 1 <= kinds.count("ok") <= RATE + RATE * took + 1, (name, outcomes, took)
            assert kinds.count("refused") >= 1, (name, outcomes)
            details = [detail for kind, detail in outcomes if kind == "refused"]
            assert all("rate_limited" in d for d in details), (name, details)
            assert all(("429" in d) or "RESOURCE_EXHAUSTED" in d for d in details), details

        app[SERVICES].draining = True
        for name, call in ways.items():
            kind, detail = await call()
            assert kind == "refused" and "draining" in detail, (name, detail)
            assert ("503" in detail) or "UNAVAILABLE" in detail, (name, detail)
        app[SERVICES].draining = False
