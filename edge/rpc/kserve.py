"""KServe v2 over gRPC (proto/grpc_predict_v2.proto, `inference.GRPCInferenceService`): a thin
adapter between its messages and edge.kserve, as edge/transports/kserve_rest.py is for REST.

ModelInfer takes inputs as `raw_input_contents` (what tritonclient sends) or typed `contents`,
and answers every output in `raw_output_contents`. ModelStreamInfer is a GrpcStreamSession
(edge.rpc.streaming): each request is a frame (an image of `NAME`, or one row of
`NAME.raw`), latest request wins while the model is behind, and every request is answered
once, with a response or with an `error_message` naming its id (superseded, rate limited, a
bad image). Errors of the unary calls are status codes (`GRPC_CODE`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError

from edge import codec
from edge.appkeys import SERVICES, Services
from edge.frames import RawInput
from edge.kserve import metadata
from edge.kserve.errors import KServeError, invalid
from edge.kserve.infer import as_tensor, image_of, infer, pipeline_tensors, raw_rows
from edge.kserve.messages import InferRequest, InferResponse, RequestedOutput
from edge.kserve.metadata import Target
from edge.kserve.tensors import check_header, from_raw, from_values, to_raw
from edge.ratelimit import CLIENTS, client_of
from edge.repository import Route, UnknownModel
from edge.rpc import streaming
from edge.rpc.gen import grpc_predict_v2_pb2 as pb
from edge.rpc.gen import grpc_predict_v2_pb2_grpc as pb_grpc
from edge.stream import Stream
from edge.transports import common
from edge.transports.kserve_rest import not_ready

TRANSPORT = "kserve-grpc"
SERVICE = "inference.GRPCInferenceService"
Code = grpc.StatusCode
GRPC_CODE = {
    "invalid": Code.INVALID_ARGUMENT,
    "not_found": Code.NOT_FOUND,
    "too_large": Code.RESOURCE_EXHAUSTED,
    "rate_limited": Code.RESOURCE_EXHAUSTED,
    "internal": Code.INTERNAL,
    "unavailable": Code.UNAVAILABLE,
}
#: the typed contents field of each datatype (FP16 has none: it comes raw)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
MAX_ID = 256
#: requests with more typed values than this are converted off the event loop
INLINE_VALUES = 16 * 1024


def register(server: grpc.aio.Server, app: web.Application) -> str:
    """Add the service, as the generated `add_..._to_server` would, but with requests parsed
    by `_parse`: bytes that are no message end the call with INVALID_ARGUMENT, not UNKNOWN and
    a traceback in the log per call."""
    servicer = KServeService(app)
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        parse = _parse(getattr(pb, method.input_type.name))
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
    server.add_registered_method_handlers(SERVICE, handlers)
    return SERVICE


class Malformed:
    """A request whose bytes protobuf cannot parse."""

    def __init__(self, error: Exception) -> None:
        self.error = str(error)


def _parse(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Malformed(e)

    return parse


def _checked(impl: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
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
        return pb.ServerReadyResponse(ready=not not_ready(self.services))

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
            await context.abort(GRPC_CODE[e.kind], e.message)
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
        refused = streaming.refusal(self.services)
        if refused is not None:
            code, reason, message = refused
            await context.abort(code, f"{reason}: {message}")
        try:
            limit = self.services.settings.max_frame_bytes
            if typed_values(request) > INLINE_VALUES:  # megabytes of typed values: a thread
                req = await asyncio.to_thread(to_request, request, limit)
            else:
                req = to_request(request, limit)
            with client_of(self.app[CLIENTS], streaming.peer_host(context.peer())):
                response = await infer(self.services, req, TRANSPORT)
        except KServeError as e:
            await context.abort(GRPC_CODE[e.kind], e.message)
        return to_response(response)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        # Read with context.read() (one reader task); the iterator is left alone.
        translation = StreamTranslation(self.services)
        await streaming.serve_stream(self.app, context, translation, TRANSPORT)


def to_request(request: pb.ModelInferRequest, max_element_bytes: int) -> InferRequest:
    """A ModelInferRequest as the protocol's request, every tensor checked."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send every "
            "input's data there, or none"
        )
    if len(request.id) > MAX_ID:
        raise invalid(f"id longer than {MAX_ID} characters")
    inputs = []
    for i, t in enumerate(request.inputs):
        name, datatype, shape = check_header(t.name, t.datatype, list(t.shape))
        params = parameters(t.parameters)
        if raw:
            inputs.append(from_raw(name, datatype, shape, raw[i], max_element_bytes, params))
        elif datatype in CONTENTS:
            values = list(getattr(t.contents, CONTENTS[datatype]))
            inputs.append(from_values(name, datatype, shape, values, max_element_bytes, params))
        else:
            raise invalid(f"input {name!r}: {datatype} comes in raw_input_contents only")
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        inputs=inputs,
        outputs=[RequestedOutput(o.name, True) for o in request.outputs],
        id=request.id,
        parameters=parameters(request.parameters),
    )


def typed_values(request: pb.ModelInferRequest) -> int:
    """How many values the request's inputs carry in typed `contents`."""
    if request.raw_input_contents:
        return 0
    return sum(
        len(getattr(t.contents, CONTENTS.get(t.datatype, "bytes_contents"))) for t in request.inputs
    )


def parameters(params: Any) -> dict[str, Any]:
    """A parameters map as plain values."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def to_response(response: InferResponse) -> pb.ModelInferResponse:
    """The protocol's response with every output in raw_output_contents, as Triton answers."""
    return pb.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
            for t in response.outputs
        ],
        raw_output_contents=[to_raw(t) for t in response.outputs],
    )


class StreamTranslation:
    """ModelInferRequests of one model in (either form; a raw request is one row, one frame),
    ModelStreamInferResponses out.

    Each request's id is kept until its answer is sent (ids only, at most MAX_ID characters
    each; a client that stops reading is cut off after send_timeout_s, as on the WebSocket)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._target: Target | None = None
        self._version = ""
        self._ids: dict[int, str] = {}
        self._wanted: dict[int, set[str]] = {}
        self._outputs: tuple[metadata.TensorSpec, ...] = ()
        self._names: list[str] = []  # the raw form's outputs

    def route(self, first: pb.ModelInferRequest, default_model: str) -> Route:
        if isinstance(first, Malformed):
            raise UnknownModel(f"the first request is not a protobuf message: {first.error}")
        try:
            target = Target.parse(first.model_name or default_model)
        except KServeError as e:
            raise UnknownModel(e.message) from None
        route = Route(target.name, first.model_version or None)
        model = self.services.repo.resolve(route)  # raises UnknownModel
        self._target, self._version = target, first.model_version
        self._outputs = metadata.pipeline_outputs(model)
        self._names = list(model.output_names)
        return route

    def take(
        self, services: Services, stream: Stream, seq: int, request: pb.ModelInferRequest
    ) -> bytes | RawInput | None:
        assert self._target is not None
        if isinstance(request, Malformed):
            message = f"not a protobuf message: {request.error}"
            common.refuse_frame(services, stream, seq, "bad_message", message)
            return None
        self._ids[seq] = request.id[:MAX_ID]
        try:
            if request.model_name != self._target.public or request.model_version != self._version:
                raise invalid(
                    f"this stream is on {self._target.public!r}; open another for "
                    f"{request.model_name!r}"
                )
            req = to_request(request, services.settings.max_frame_bytes)
            model = services.repo.resolve(stream.route)
            data: bytes | RawInput
            if self._target.raw:
                rows = raw_rows(model, req)
                if len(rows) != 1:
                    raise invalid("on a stream each request is one frame: send one row")
                data, stream.publish = rows[0], False  # network outputs are not results
            else:
                data = image_of(services, model, req)
            th = req.parameters.get("threshold")
            if th is not None:
                if isinstance(th, bool) or not isinstance(th, int | float) or not 0 <= th <= 1:
                    raise invalid("the threshold parameter must be a number between 0 and 1")
                stream.threshold = float(th)
        except (KServeError, UnknownModel) as e:
            message = e.message if isinstance(e, KServeError) else str(e)
            common.refuse_frame(services, stream, seq, "bad_message", message)
            return None
        if req.outputs:
            self._wanted[seq] = {o.name for o in req.outputs}
        return data

    def responses(self, message: dict[str, Any]) -> list[pb.ModelStreamInferResponse]:
        kind = message.get("type")
        if kind == "result":
            seq = message["seq"]
            rid, wanted = self._ids.pop(seq, ""), self._wanted.pop(seq, None)
            if "outputs" in message:  # the raw form: the network's own, one row
                arrays = codec.from_arrays(message["outputs"])
                outputs = [as_tensor(n, a[None]) for n, a in zip(self._names, arrays, strict=True)]
            else:
                outputs = pipeline_tensors(self._outputs, dict(message))
            if wanted:
                outputs = [t for t in outputs if t.name in wanted]
            assert self._target is not None
            version = message["model"].partition("@")[2]
            response = to_response(InferResponse(self._target.public, version, outputs, rid))
            return [pb.ModelStreamInferResponse(infer_response=response)]
        if kind == "dropped":
            seqs = message["seqs"] if "seqs" in message else [message["seq"]]
            reason = message["reason"]
            return [self._error(s, f"dropped ({reason})") for s in seqs]
        if kind == "error" and "seq" in message:
            return [self._error(message["seq"], f"{message['code']}: {message['message']}")]
        return []

    def _error(self, seq: int, what: str) -> pb.ModelStreamInferResponse:
        rid = self._ids.pop(seq, "")
        self._wanted.pop(seq, None)
        return pb.ModelStreamInferResponse(
            error_message=f"request {rid!r} (seq {seq}): {what}",
            infer_response=pb.ModelInferResponse(id=rid),
        )
