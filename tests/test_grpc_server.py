"""The gRPC server around the services: tokens, TLS, health, reflection, the drain and several
serving processes, as a gRPC client sees them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from edge.core.services import SERVICES
from edge.process.app import drain
from edge.transports.grpc.gen import inference_pb2 as ours
from tests import grpcclient as gc
from tests.conftest import GatewayProcess, free_port, settings_for, wait_ready
from tests.pace import deadline, wait_until
from tests.test_overload import NO_RATE_LIMITS
from tests.tls_util import make_tls

pytestmark = pytest.mark.integration
TOKEN = "grpc-test-token-0123456789abcdef"
Response = ours.InferenceResponse
Code = grpc.StatusCode


async def test_calls_need_a_token_when_auth_is_on(face_repo: Path, face_jpeg: bytes) -> None:
    """No token or a bad one: UNAUTHENTICATED before any work, for Predict and PredictStream;
    the right one in `authorization: Bearer` metadata is let in. Health stays open."""
    settings = settings_for(face_repo, auth_tokens=(TOKEN,))
    async with (
        gc.grpc_gateway(settings) as (_, _, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = gc.stub(channel)
        for metadata in ((), gc.auth("wrong-token-0123456789"), (("authorization", TOKEN),)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Predict(gc.request(face_jpeg), metadata=metadata, timeout=deadline())
            assert e.value.code() == Code.UNAUTHENTICATED
            call = stub.PredictStream(metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call.write(gc.request(face_jpeg))  # the refusal may end the call first
                await call.read()
            assert e.value.code() == Code.UNAUTHENTICATED
        ok = await stub.Predict(gc.request(face_jpeg), metadata=gc.auth(TOKEN), timeout=deadline())
        assert gc.full(ok).detections
        call = stub.PredictStream(metadata=gc.auth(TOKEN))
        await call.write(gc.request(face_jpeg))
        assert gc.full(await call.read()).status == Response.RESULT
        await call.done_writing()
        assert await call.code() == Code.OK
        await serving(channel)  # without a token


async def test_open_calls_are_bounded_before_their_request_is_read(
    face_repo: Path, face_jpeg: bytes
) -> None:
    """Health and reflection need no token, so grpcio would read a request of up to the largest
    message any method takes from anyone: each open call holds a slot of
    max_pending_auth_per_client, taken before its request is read. With two health watches
    held, a third open call from the address is RESOURCE_EXHAUSTED, a 24 MiB one as well
    (its request never read), while a token's call is served; when the watches end, health
    answers again."""
    settings = settings_for(
        face_repo, auth_tokens=(TOKEN,), max_pending_auth_per_client=2, max_pending_auth=8
    )
    async with (
        gc.grpc_gateway(settings) as (_, _, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        await serving(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        for w in watches:  # each has its slot once it answered
            assert (await asyncio.wait_for(w.read(), deadline())).status
        huge = health_pb2.HealthCheckRequest(service="x" * (24 << 20))
        for request in (health_pb2.HealthCheckRequest(), huge):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await health.Check(request, timeout=deadline())
            assert e.value.code() == Code.RESOURCE_EXHAUSTED, e.value
        ok = await gc.stub(channel).Predict(
            gc.request(face_jpeg), metadata=gc.auth(TOKEN), timeout=deadline()
        )
        assert gc.full(ok).detections
        for w in watches:
            w.cancel()
        await serving(channel)  # the slots came back


async def serving(channel: grpc.aio.Channel) -> None:
    """Wait until health says SERVING (it follows readiness a moment after /readyz)."""
    health = health_pb2_grpc.HealthStub(channel)

    async def ok() -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=deadline())
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    await wait_until(ok, deadline(), "health is not SERVING")


async def test_a_token_holds_at_most_its_quota_of_streams(
    face_repo: Path, face_jpeg: bytes
) -> None:
    """max_streams_per_token counts gRPC streams too: the second is RESOURCE_EXHAUSTED, and a
    slot comes back when a stream ends."""
    settings = settings_for(face_repo, auth_tokens=(TOKEN,), max_streams_per_token=1)
    async with (
        gc.grpc_gateway(settings) as (_, _, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = gc.stub(channel)
        first = stub.PredictStream(metadata=gc.auth(TOKEN))
        await first.write(gc.request(face_jpeg))
        await asyncio.wait_for(first.read(), deadline())
        second = stub.PredictStream(metadata=gc.auth(TOKEN))
        await second.write(gc.request(face_jpeg))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await second.read()
        assert e.value.code() == Code.RESOURCE_EXHAUSTED
        await first.done_writing()
        assert await first.code() == Code.OK
        third = stub.PredictStream(metadata=gc.auth(TOKEN))
        await third.write(gc.request(face_jpeg))
        assert gc.full(await asyncio.wait_for(third.read(), deadline())).seq == 0
        await third.done_writing()


async def test_tls_when_the_gateway_has_a_certificate(
    face_repo: Path, face_jpeg: bytes, tmp_path: Path
) -> None:
    """With a certificate gRPC is TLS only: a client trusting it is served; plaintext is not."""
    ca, cert, key = make_tls(tmp_path)
    settings = settings_for(face_repo, tls_cert=cert, tls_key=key)
    async with gc.grpc_gateway(settings) as (_, _, target):
        creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(target, creds) as channel:
            ok = await gc.stub(channel).Predict(gc.request(face_jpeg), timeout=deadline())
            assert gc.full(ok).detections
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await gc.stub(channel).Predict(gc.request(face_jpeg), timeout=deadline())
            assert e.value.code() == Code.UNAVAILABLE


async def test_reflection_lists_and_describes_the_services(face_repo: Path) -> None:
    """grpcurl needs no proto file: reflection lists the services and serves their
    descriptors (read with grpcio-reflection's own client)."""
    async with gc.grpc_gateway(settings_for(face_repo)) as (_, _, target):
        channel = grpc.insecure_channel(target)  # the reflection client is synchronous
        try:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = await asyncio.to_thread(db.get_services)
            assert {
                "inference.InferenceService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= set(services)
            from google.protobuf.descriptor_pool import DescriptorPool

            pool = DescriptorPool(db)
            service = await asyncio.to_thread(pool.FindServiceByName, "inference.InferenceService")
            assert sorted(service.methods_by_name) == ["Predict", "PredictStream"]
            request = service.methods_by_name["Predict"].input_type
            assert request.fields_by_name["payload"].number == 1
            assert request.fields_by_name["model_id"].number == 2
        finally:
            channel.close()


async def test_drain_answers_every_frame_and_ends_streams_unavailable(
    face_repo: Path, face_jpeg: bytes
) -> None:
    """On drain, health turns NOT_SERVING, an open stream gets an answer for each frame the
    gateway took, then UNAVAILABLE with retry-after-ms; new calls are refused UNAVAILABLE."""
    settings = settings_for(face_repo, drain_delay_s=0.0)
    async with (
        gc.grpc_gateway(settings) as (_, app, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = gc.stub(channel)
        call = stub.PredictStream()
        for _ in range(5):
            await call.write(gc.request(face_jpeg))
        first = gc.full(await asyncio.wait_for(call.read(), deadline()))
        services = app[SERVICES]

        def taken() -> int:
            return sum(s.stream.stats.received for s in services.sessions if s.stream)

        await wait_until(lambda: taken() == 5, deadline(frames=5), taken)
        drained = asyncio.create_task(drain(app))
        seen = [first]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            while True:
                response = await asyncio.wait_for(call.read(), deadline())
                assert response is not grpc.aio.EOF, "the stream ended OK, not UNAVAILABLE"
                seen.append(gc.full(response))
        await asyncio.wait_for(drained, deadline())
        status = e.value
        assert status.code() == Code.UNAVAILABLE and "going away" in (status.details() or "")
        assert ("retry-after-ms", "1000") in tuple(status.trailing_metadata() or ())
        assert sorted(r.seq for r in seen) == list(range(5)), [(r.seq, r.reason) for r in seen]
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=deadline())
            return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

        await wait_until(not_serving, deadline(), "health still SERVING while drained")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Predict(gc.request(face_jpeg), timeout=deadline())
        assert e.value.code() == Code.UNAVAILABLE


async def test_health_is_not_serving_until_the_models_are_warm(face_repo: Path) -> None:
    """Health follows readiness: before the models load it says NOT_SERVING."""
    from edge.process.app import create_app
    from edge.transports.grpc.server import GrpcServer

    settings = settings_for(face_repo, grpc_port=free_port())
    app = create_app(settings)
    server = GrpcServer(app)
    await server.start()  # the app itself is not started: no model loads
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "inference.InferenceService"):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=deadline()
                )
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop()


async def test_a_taken_grpc_port_stops_start_up_with_a_message(face_repo: Path) -> None:
    """Alone, the process binds gRPC's port exclusively: a port in use is an error."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "edge",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--grpc-port",
                str(port),
                "--processes",
                "1",
                "--models",
                str(face_repo),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=deadline(),
        )
    assert run.returncode != 0 and f"cannot listen for gRPC on 127.0.0.1:{port}" in run.stderr


async def test_several_processes_share_the_grpc_port(
    spawn_gateway: Callable[..., GatewayProcess], face_repo: Path, face_jpeg: bytes
) -> None:
    """With --processes 2 both serving processes take gRPC connections on the one port, and
    each answers Predict and PredictStream."""
    port = free_port()
    gw = spawn_gateway(
        face_repo, {"EDGE_PROCESSES": "2", "EDGE_GRPC_PORT": str(port), **NO_RATE_LIMITS}
    )
    await wait_ready(gw.url)
    seen: set[str] = set()
    for _ in range(40):  # new connections until the kernel has given both processes some
        # a subchannel pool of its own: a connection of its own, not the process's shared one
        own = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own) as channel:
            stub = gc.stub(channel)
            ok = await stub.Predict(gc.request(face_jpeg), timeout=deadline())
            assert gc.full(ok).detections
            call = stub.PredictStream()
            await call.write(gc.request(face_jpeg))
            assert gc.full(await asyncio.wait_for(call.read(), deadline())).detections
            seen.add(dict(await call.initial_metadata())["edge-process"])
            await call.done_writing()
            assert await call.code() == Code.OK
        if seen == {"0", "1"}:
            break
    assert seen == {"0", "1"}, gw.log.read_text()[-2000:]
