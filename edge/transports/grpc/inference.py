"""The gRPC InferenceService (proto/inference.proto, package `inference`): Predict and
PredictStream, a thin adapter between its messages and the pipeline's frames and replies.

`model_id` routes as the WebSocket's `?model=` does (`name`, `name@version`, empty for the
default model); `threshold` and `max_frame_age_ms` are the WebSocket's config settings, carried
by any request. Predict answers one frame or ends with a status code; PredictStream is a
GrpcStreamSession (edge.transports.grpc.streaming) whose every frame is answered with a response
carrying its seq and a status: RESULT, DROPPED with a reason, or ERROR with a code and a
message; a client that sets `merge_dropped` gets each run of drops the outbox merged as one
DROPPED response naming them all (`seqs`), as the WebSocket's.
Classification results fill the original contract's `scores` and `label` as well.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError

from edge.core import admission
from edge.core import streams as common
from edge.core.admission import NotAdmitted
from edge.core.services import SERVICES, Services
from edge.core.stream import Stream
from edge.frames import Dropped, Error, Notice, Result
from edge.models.repository import Route, UnknownModel
from edge.settings import Settings
from edge.transports.grpc import calls, guard
from edge.transports.grpc.gen import inference_pb2, inference_pb2_grpc

TRANSPORT = "grpc"
SERVICE = "inference.InferenceService"
Response = inference_pb2.InferenceResponse
Code = grpc.StatusCode
_MAX_AGE_MS = 3.6e6


def register(server: grpc.aio.Server, app: web.Application) -> str:
    """Requests arrive as bytes and are parsed here, so a malformed one is answered
    INVALID_ARGUMENT (on a stream: that frame ERROR bad_message, the stream goes on) rather
    than failing in gRPC's own deserializer with UNKNOWN."""
    service = InferenceService(app)
    write = Response.SerializeToString
    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(service.Predict, None, write),
        "PredictStream": grpc.stream_stream_rpc_method_handler(service.PredictStream, None, write),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return SERVICE


class TooLarge(ValueError):
    """A request over its call's limit (calls.frame_limit), refused before it is parsed."""


def parse(raw: bytes, limit: int) -> inference_pb2.InferenceRequest:
    """An InferenceRequest from its bytes, or ValueError saying they are not one (TooLarge
    when they are more than `limit`)."""
    if len(raw) > limit:
        raise TooLarge(f"the request is {len(raw)} bytes, more than {limit}")
    try:
        return inference_pb2.InferenceRequest.FromString(raw)
    except DecodeError as e:
        raise ValueError(f"not an InferenceRequest: {e}") from None


class InferenceService(inference_pb2_grpc.InferenceServiceServicer):
    """The servicer; its methods take requests as bytes (see `register`)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.services: Services = app[SERVICES]

    async def Predict(  # noqa: N802 (the method's name in the proto)
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> Response:
        services, client = self.services, guard.peer_host(context.peer())
        try:
            hold = admission.admit_request(services, TRANSPORT, client)
        except NotAdmitted as e:
            await calls.abort(context, e.refusal)
        with hold:
            try:
                request = parse(raw, calls.frame_limit(services.settings))
            except TooLarge as e:
                await context.abort(Code.RESOURCE_EXHAUSTED, f"bad_frame: {e}")
            except ValueError as e:
                await context.abort(Code.INVALID_ARGUMENT, f"bad_message: {e}")
            try:
                route = admission.request_route(
                    services, request.model_id or services.settings.default_model
                )
            except NotAdmitted as e:
                await calls.abort(context, e.refusal)
            try:
                threshold, max_age_ms = request_settings(request)
            except ValueError as e:
                await context.abort(Code.INVALID_ARGUMENT, f"bad_message: {e}")
            max_age_s = max_age_ms / 1000 if max_age_ms else None
            reply = await common.infer_once(
                services, TRANSPORT, route, request.payload, threshold, max_age_s, client=client
            )
            if reply is None:
                await context.abort(Code.DEADLINE_EXCEEDED, "timeout: no result in time")
            elif isinstance(reply, Error):
                code = calls.status(reply.code)
                context.set_trailing_metadata((("edge-error-code", reply.code),))
                await context.abort(code, f"{reply.code}: {reply.message}")
            elif isinstance(reply, Dropped):  # rate limited, or the gateway is overloaded
                limited = reply.reason == "rate_limited"
                code = Code.RESOURCE_EXHAUSTED if limited else Code.UNAVAILABLE
                context.set_trailing_metadata((("edge-drop-reason", reply.reason),))
                await context.abort(code, f"dropped: {reply.reason}")
            return result_response(reply)  # type: ignore[arg-type]

    async def PredictStream(  # noqa: N802 (the method's name in the proto)
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        # Read with context.read() (one reader task); the iterator is left alone.
        translation = PredictTranslation(calls.frame_limit(self.services.settings))
        await calls.serve_stream(self.app, context, translation, TRANSPORT)


class PredictTranslation:
    """InferenceRequest in, the stream's replies out as InferenceResponses (the stream's wire:
    each result built from the typed value on the worker that answered it)."""

    def __init__(self, limit: int = 4 * Settings.max_frame_bytes) -> None:
        self._model_id = ""  # the model_id the stream is on, as the client wrote it
        self._limit = limit  # the largest request parsed (calls.frame_limit)
        self.merge_dropped = False  # what the client's merge_dropped asked for last

    def route(self, first: bytes, default_model: str) -> Route:
        """The first request's model; one that does not parse gets the default model (and
        is answered bad_message by `take`)."""
        try:
            self._model_id = parse(first, self._limit).model_id
        except ValueError:
            self._model_id = ""
        return Route.parse(self._model_id or default_model)

    async def take(self, services: Services, stream: Stream, seq: int, raw: bytes) -> bytes | None:
        try:
            request = parse(raw, self._limit)
            threshold, max_age_ms = request_settings(request)
        except TooLarge as e:
            common.refuse_frame(services, stream, seq, "bad_frame", str(e))
            return None
        except ValueError as e:
            common.refuse_frame(services, stream, seq, "bad_message", str(e))
            return None
        if request.model_id and request.model_id != self._model_id:
            try:
                routed = services.repo.route(request.model_id, stream.id)
            except UnknownModel as e:
                common.refuse_frame(services, stream, seq, "unknown_model", str(e))
                return None
            stream.route, stream.model_label = routed.route, routed.model.name
            self._model_id = request.model_id
        if threshold is not None:
            stream.threshold = threshold
        if request.HasField("merge_dropped"):
            self.merge_dropped = request.merge_dropped
        if max_age_ms is not None:
            stream.max_age_s = max_age_ms / 1000 if max_age_ms else None
        return bytes(request.payload)

    # -- the stream's wire (edge.frames.Wire): a response per frame, or per run of drops ----
    def result(self, result: Result, /) -> list[Response]:
        return [result_response(result)]

    def error(self, error: Error, /) -> list[Response]:
        if error.seq is None:  # about a control message: the WebSocket's own
            return []
        status = Response.ERROR
        return [Response(status=status, seq=error.seq, code=error.code, message=error.message)]

    def dropped(self, dropped: Dropped, /) -> list[Response]:
        """The outbox's merged run of drops: one response naming them all in `seqs` when the
        client asked for merge_dropped, else one per frame."""
        reason, seqs = dropped.reason, dropped.seqs
        if self.merge_dropped:
            return [Response(status=Response.DROPPED, seq=seqs[0], seqs=seqs, reason=reason)]
        return [Response(status=Response.DROPPED, seq=s, reason=reason) for s in seqs]

    def notice(self, notice: Notice, /) -> list[Response]:
        return []  # config, stats, goaway: the WebSocket's own messages


def request_settings(request: inference_pb2.InferenceRequest) -> tuple[float | None, float | None]:
    """(threshold, max_frame_age_ms) as the request sets them (None: unset; an age of 0
    clears the deadline), or ValueError saying what is wrong."""
    threshold = age = None
    if request.HasField("threshold"):
        threshold = request.threshold
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ValueError("threshold must be between 0 and 1")
    if request.HasField("max_frame_age_ms"):
        age = request.max_frame_age_ms
        if not (math.isfinite(age) and (age == 0 or 1.0 <= age <= _MAX_AGE_MS)):
            raise ValueError("max_frame_age_ms must be 0 (no deadline) or between 1 and 3600000")
    return threshold, age


def result_response(result: Result) -> Response:
    r = Response(
        status=Response.RESULT,
        seq=result.seq,
        model=result.model,
        width=result.width,
        height=result.height,
    )
    timing = result.timing
    r.timing.queue_ms = round(timing.queue_ms, 3)
    r.timing.inference_ms = round(timing.inference_ms, 3)
    r.timing.total_ms = round(timing.total_ms, 3)
    payload = result.payload
    for d in payload.get("detections", ()):
        det = r.detections.add(label=d.get("label", ""), score=d.get("score", 0.0))
        box = d.get("box")
        if box:
            det.box.x1, det.box.y1, det.box.x2, det.box.y2 = box
        for x, y in d.get("keypoints", ()):
            det.keypoints.add(x=x, y=y)
        for x, y in d.get("polygon", ()):
            det.polygon.add(x=x, y=y)
        if "track_id" in d:
            det.track_id = d["track_id"]
        if "text" in d:
            det.text, det.text_confidence = d["text"], d["confidence"]
    classes = payload.get("classes", ())
    for c in classes:
        r.classes.add(index=c["index"], label=c["label"], score=c["score"])
        r.scores.append(c["score"])
    if classes:
        r.label = classes[0]["index"]
    return r
