"""KServe v2 over gRPC (proto/grpc_predict_v2.proto, `inference.GRPCInferenceService`): a thin
adapter between its messages and edge.kserve, as edge/transports/kserve_rest.py is for REST.

ModelInfer takes inputs as `raw_input_contents` (what tritonclient sends) or typed `contents`,
and answers every output in `raw_output_contents`. ModelStreamInfer is a GrpcStreamSession
(edge.transports.grpc.streaming): each request is a frame (an image of `NAME`, or one row of
`NAME.raw`), latest request wins while the model is behind, and every request is answered
once, with a response or with an `error_message` naming its id (superseded, rate limited, a
bad image). Errors of the unary calls are status codes
(edge.transports.grpc.calls.status).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from edge.core import admission
from edge.core.admission import NotAdmitted
from edge.core.services import SERVICES, Services
from edge.kserve import metadata
from edge.kserve.errors import KServeError
from edge.kserve.infer import infer
from edge.kserve.metadata import Target
from edge.transports.grpc import calls, guard
from edge.transports.grpc.gen import grpc_predict_v2_pb2 as pb
from edge.transports.grpc.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from edge.transports.grpc.kserve_messages import (
    Malformed,
    converted_off_loop,
    parser,
    to_request,
    to_response,
)
from edge.transports.grpc.kserve_stream import ModelStreamTranslation

TRANSPORT = "kserve-grpc"
SERVICE = "inference.GRPCInferenceService"
Code = grpc.StatusCode
#: the calls whose requests carry tensors; every other call's request is held to
#: calls.SMALL_CALL_BYTES
TENSOR_CALLS = ("ModelInfer", "ModelStreamInfer")


def register(server: grpc.aio.Server, app: web.Application) -> str:
    """Add the service, as the generated `add_..._to_server` would, but with requests parsed
    by `parser`: bytes that are no message end the call with INVALID_ARGUMENT, not UNKNOWN and
    a traceback in the log per call, and bytes over the method's limit (small but for the
    tensor calls) with RESOURCE_EXHAUSTED before protobuf parses them."""
    servicer = KServeService(app)
    handlers = {}
    large = calls.tensor_limit(app[SERVICES].settings)
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        limit = large if method.name in TENSOR_CALLS else calls.SMALL_CALL_BYTES
        parse = parser(getattr(pb, method.input_type.name), limit)
        write = getattr(pb, method.output_type.name).SerializeToString
        impl = getattr(servicer, method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                impl, request_deserializer=parse, response_serializer=write
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _checked(impl), request_deserializer=parse, response_serializer=write
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio 1.63 on: a faster lookup
        server.add_registered_method_handlers(SERVICE, handlers)
    return SERVICE


def _checked(impl: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed) and request.too_large:
            await context.abort(Code.RESOURCE_EXHAUSTED, f"too_large: {request.error}")
        if isinstance(request, Malformed):
            await context.abort(Code.INVALID_ARGUMENT, f"not a protobuf message: {request.error}")
        return await impl(request, context)

    return call


class KServeService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.services: Services = app[SERVICES]

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=not self.services.not_ready())

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        try:
            metadata.resolve(self.services.repo, Target.parse(request.name), request.version)
        except KServeError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(  # noqa: N802
        self, request: Any, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**metadata.server_metadata())

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            target = Target.parse(request.name)
            meta = metadata.model_metadata(self.services.repo, target, request.version)
        except KServeError as e:
            await context.abort(calls.status(e.kind), e.message)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensors(**t) for t in meta["inputs"]],
            outputs=[tensors(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        client = guard.peer_host(context.peer())
        try:
            hold = admission.admit_request(self.services, TRANSPORT, client)
        except NotAdmitted as e:
            await calls.abort(context, e.refusal)
        try:
            limit = self.services.settings.max_frame_bytes
            with hold:
                if converted_off_loop(request):
                    req = await asyncio.to_thread(to_request, request, limit)
                else:
                    req = to_request(request, limit)
                response = await infer(self.services, req, TRANSPORT, client)
        except KServeError as e:
            await context.abort(calls.status(e.kind), e.message)
        return to_response(response)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        # Read with context.read() (one reader task); the iterator is left alone.
        translation = ModelStreamTranslation(self.services)
        await calls.serve_stream(self.app, context, translation, TRANSPORT)
