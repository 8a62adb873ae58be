"""ModelStreamInfer's requests and responses on a GrpcStreamSession
(edge.transports.grpc.streaming): what Triton's streaming clients send, as the stream's frames,
and the stream's typed replies as ModelStreamInferResponses (tensors built from the result
itself, on the worker that answered it)."""

from __future__ import annotations

import asyncio

from edge.core import streams as common
from edge.core.services import Services
from edge.core.stream import Stream
from edge.frames import Dropped, Error, Notice, RawInput, Result
from edge.inference.engine import LoadedModel
from edge.inference.tasks.base import Output, Task
from edge.kserve import metadata
from edge.kserve.errors import KServeError, invalid
from edge.kserve.infer import as_tensor, image_of, pipeline_tensors, raw_rows
from edge.kserve.messages import InferRequest, InferResponse
from edge.kserve.metadata import Target
from edge.models.repository import Route, UnknownModel
from edge.transports.grpc.gen import grpc_predict_v2_pb2 as pb
from edge.transports.grpc.kserve_messages import (
    MAX_ID,
    Malformed,
    converted_off_loop,
    to_request,
    to_response,
)


class ModelStreamTranslation:
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
        self._task: Task | None = None  # the pipeline form's, and what it outputs
        self._declared: tuple[Output, ...] = ()
        self._names: list[str] = []  # the raw form's outputs

    def route(self, first: pb.ModelInferRequest, default_model: str) -> Route:
        if isinstance(first, Malformed):
            raise UnknownModel(f"the first request is not a protobuf message: {first.error}")
        try:
            target = Target.parse(first.model_name or default_model)
        except KServeError as e:
            raise UnknownModel(e.message) from None
        routed = self.services.repo.route(Route(target.name, first.model_version or None))
        model = routed.model
        self._target, self._version = target, first.model_version
        self._task, self._declared = model.task, metadata.declared(model)
        self._names = list(model.output_names)
        return routed.route

    async def take(
        self, services: Services, stream: Stream, seq: int, request: pb.ModelInferRequest
    ) -> bytes | RawInput | None:
        assert self._target is not None
        if isinstance(request, Malformed):
            code = "bad_frame" if request.too_large else "bad_message"
            message = (
                request.error if request.too_large else f"not a protobuf message: {request.error}"
            )
            common.refuse_frame(services, stream, seq, code, message)
            return None
        self._ids[seq] = request.id[:MAX_ID]
        try:
            if request.model_name != self._target.public or request.model_version != self._version:
                raise invalid(
                    f"this stream is on {self._target.public!r}; open another for "
                    f"{request.model_name!r}"
                )
            model = services.repo.resolve(stream.route)
            if converted_off_loop(request):  # as the unary call: millions of values, a thread
                req, data = await asyncio.to_thread(self._frame, services, model, request)
            else:
                req, data = self._frame(services, model, request)
            if self._target.raw:
                stream.publish = False  # network outputs are not results
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

    def _frame(
        self, services: Services, model: LoadedModel, request: pb.ModelInferRequest
    ) -> tuple[InferRequest, bytes | RawInput]:
        """The request's tensors, checked as the unary call checks them, and its frame."""
        req = to_request(request, services.settings.max_frame_bytes)
        if not self._target or not self._target.raw:
            return req, image_of(services, model, req)
        rows = raw_rows(model, req)
        if len(rows) != 1:
            raise invalid("on a stream each request is one frame: send one row")
        return req, rows[0]

    # -- the stream's wire (edge.frames.Wire): results on the worker that answered them ----
    def result(self, result: Result, /) -> list[pb.ModelStreamInferResponse]:
        if result.outputs is not None:  # the raw form: the network's own, one row
            pairs = zip(self._names, result.outputs, strict=True)
            outputs = [as_tensor(n, a[None]) for n, a in pairs]
        else:  # ValueError for NaN: the frame is answered postprocess_failed (its id kept)
            assert self._task is not None
            outputs = pipeline_tensors(self._task, result, self._declared)
        rid, wanted = self._ids.pop(result.seq, ""), self._wanted.pop(result.seq, None)
        if wanted:
            outputs = [t for t in outputs if t.name in wanted]
        assert self._target is not None
        version = result.model.partition("@")[2]
        response = to_response(InferResponse(self._target.public, version, outputs, rid))
        return [pb.ModelStreamInferResponse(infer_response=response)]

    def error(self, error: Error, /) -> list[pb.ModelStreamInferResponse]:
        if error.seq is None:  # about a control message: the WebSocket's own
            return []
        return [self._error(error.seq, f"{error.code}: {error.message}")]

    def dropped(self, dropped: Dropped, /) -> list[pb.ModelStreamInferResponse]:
        return [self._error(s, f"dropped ({dropped.reason})") for s in dropped.seqs]

    def notice(self, notice: Notice, /) -> list[pb.ModelStreamInferResponse]:
        return []

    def _error(self, seq: int, what: str) -> pb.ModelStreamInferResponse:
        rid = self._ids.pop(seq, "")
        self._wanted.pop(seq, None)
        return pb.ModelStreamInferResponse(
            error_message=f"request {rid!r} (seq {seq}): {what}",
            infer_response=pb.ModelInferResponse(id=rid),
        )
