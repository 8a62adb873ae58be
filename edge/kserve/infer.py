"""The two ways in, for every transport: a checked `InferRequest` to an `InferResponse`.

Each sample goes through the scheduler as a one-frame stream, exactly like the unary HTTP
call: fair with the streams, batched with every other frame of its model, counted in the
metrics under the transport's label, answered once. A request is checked against the model
before anything is queued, so a bad tensor never reaches a worker.

- pipeline (`NAME`): the `image` element is the frame; its typed result becomes the tensors
  its task and later stages declare (metadata.declared) and its JSON (`result`).
- raw (`NAME.raw`): each row of the input is one frame (`RawInput`) that skips decode,
  preprocess and postprocess; the rows' outputs (arrays, as the network made them) are
  stacked back into the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge import codec
from edge.core import streams as common
from edge.core.services import Services
from edge.frames import Answer, Dropped, RawInput, Result
from edge.inference.engine import LoadedModel
from edge.inference.tasks.base import Output, Task
from edge.kserve import metadata
from edge.kserve.errors import KServeError, invalid
from edge.kserve.messages import InferRequest, InferResponse
from edge.kserve.metadata import IMAGE, RESULT, Target, TensorSpec
from edge.kserve.tensors import DTYPES, Tensor, datatype_of
from edge.models.repository import Route, UnknownModel


async def infer(
    services: Services, request: InferRequest, transport: str, client: str | None = None
) -> InferResponse:
    """Answer `request` from the client at address `client`, or raise KServeError; nothing
    is queued for a request that fails its checks."""
    target = Target.parse(request.model)
    model = metadata.resolve(services.repo, target, request.version)
    threshold = _threshold(request.parameters)
    # every sample of the request runs on the version resolved now
    route = Route(target.name, model.version)
    if target.raw:
        rows = raw_rows(model, request)
        names = list(model.output_names)
        _check_outputs(target, request, names)
        replies = await asyncio.gather(
            *(one_frame(services, transport, route, row, None, False, client) for row in rows)
        )
        arrays = [_outputs_of(reply) for reply in replies]
        outputs = [
            as_tensor(name, np.stack([row[k] for row in arrays])) for k, name in enumerate(names)
        ]
    else:
        image = image_of(services, model, request)
        _check_outputs(target, request, [t.name for t in metadata.pipeline_outputs(model)])
        reply = await one_frame(services, transport, route, image, threshold, client=client)
        result = _result_of(reply)
        try:
            outputs = pipeline_tensors(model.task, result, metadata.declared(model))
        except ValueError as e:  # NaN or an infinity, which the result's JSON cannot hold
            raise KServeError("internal", f"postprocess_failed: {e}") from None
    wanted = {o.name for o in request.outputs}
    if wanted:
        outputs = [t for t in outputs if t.name in wanted]
    return InferResponse(target.public, model.version, outputs, request.id)


def _threshold(parameters: dict[str, Any]) -> float | None:
    th = parameters.get("threshold")
    if th is None:
        return None
    if isinstance(th, bool) or not isinstance(th, int | float) or not 0.0 <= th <= 1.0:
        raise invalid("the threshold parameter must be a number between 0 and 1")
    return float(th)


def _check_outputs(target: Target, request: InferRequest, names: list[str]) -> None:
    for o in request.outputs:
        if o.name not in names:
            raise invalid(f"model {target.public!r} has no output {o.name!r}; it has {names}")


def image_of(services: Services, model: LoadedModel, request: InferRequest) -> bytes:
    """The encoded frame of a pipeline request."""
    want = f"model {model.name!r} takes one input {IMAGE!r}: BYTES [1], a JPEG or PNG image"
    if len(request.inputs) != 1:
        raise invalid(f"{want}; got {len(request.inputs)} inputs")
    tensor = request.inputs[0]
    if tensor.name != IMAGE or tensor.datatype != "BYTES" or tensor.data.size != 1:
        shape = list(tensor.shape)
        raise invalid(f"{want}; got {tensor.name!r}: {tensor.datatype} {shape}")
    data = bytes(tensor.data.ravel()[0])
    limit = services.settings.max_frame_bytes
    if len(data) > limit:
        raise KServeError("too_large", f"the image is {len(data)} bytes, more than {limit}")
    return data


def raw_rows(model: LoadedModel, request: InferRequest) -> list[RawInput]:
    """One frame per row of a raw request's input, checked against the network's input."""
    spec = metadata.raw_input(model)
    want = f"{spec.name!r}: {spec.datatype} {list(spec.shape)}"
    if len(request.inputs) != 1:
        raise invalid(f"model {model.name}.raw takes one input, {want}")
    tensor = request.inputs[0]
    got = f"{tensor.name!r}: {tensor.datatype} {list(tensor.shape)}"
    if tensor.name != spec.name:
        raise invalid(f"model {model.name}.raw takes {want}; got {got}")
    if tensor.datatype != spec.datatype:
        raise invalid(f"model {model.name}.raw takes {want}; got {got} (wrong datatype)")
    most = spec.shape[0] if spec.shape[0] > 0 else max(1, model.spec.max_batch)
    n = tensor.shape[0] if tensor.shape else 0
    if tensor.shape[1:] != model.sample_shape or not 1 <= n <= most:
        raise invalid(
            f"model {model.name}.raw takes {want} with 1 to {most} rows; got {got} (wrong shape)"
        )
    data = tensor.data.astype(model.sample_dtype, copy=False)
    return [RawInput(np.ascontiguousarray(data[i])) for i in range(n)]


async def one_frame(
    services: Services,
    transport: str,
    route: Route,
    data: bytes | RawInput,
    threshold: float | None,
    publish: bool = True,
    client: str | None = None,
) -> Answer:
    """One frame through the scheduler as a one-frame stream (common.infer_once); its answer
    (a result, a drop notice or an error), or KServeError when none comes in time."""
    try:
        reply = await common.infer_once(
            services, transport, route, data, threshold, None, publish, client
        )
    except UnknownModel as e:  # the version went away since it was resolved
        raise KServeError("unavailable", str(e)) from None
    if reply is None:
        raise KServeError("unavailable", "no result in time")
    return reply


def _outputs_of(reply: Answer) -> tuple[np.ndarray, ...]:
    """A raw row's result: the network's outputs for it; else the protocol's error."""
    result = _result_of(reply)
    assert result.outputs is not None  # a raw input's result
    return result.outputs


def _result_of(reply: Answer) -> Result:
    """A result as it is; a drop notice or an error as the protocol's error."""
    if isinstance(reply, Result):
        return reply
    if isinstance(reply, Dropped):
        if reply.reason == "rate_limited":
            raise KServeError("rate_limited", "over the frame-rate limit; retry later")
        raise KServeError("unavailable", f"dropped ({reply.reason}); retry later")
    if reply.code == "bad_frame":
        raise invalid(f"bad image: {reply.message}")
    if reply.code == "model_unavailable":
        raise KServeError("unavailable", reply.message)
    raise KServeError("internal", f"{reply.code}: {reply.message}")


def pipeline_tensors(
    task: Task, result: Result, outputs: Sequence[Output] | None = None
) -> list[Tensor]:
    """A result as the pipeline's output tensors (metadata.pipeline_outputs): each output the
    model declares (`outputs`, metadata.declared; default the task's own), from that field of
    every row, then the result's JSON without its seq (ValueError if it holds NaN)."""
    rows = result.payload.get(task.rows, [])
    columns: list[tuple[Output | TensorSpec, list[Any]]] = [
        (o, [row[o.field] for row in rows]) for o in (task.outputs if outputs is None else outputs)
    ]
    columns.append((RESULT, [codec.unary(result)]))
    return [_tensor(spec, values) for spec, values in columns]


def _tensor(spec: Output | TensorSpec, values: list[Any]) -> Tensor:
    if spec.datatype == "BYTES":
        array = _strings(values)
    else:
        array = np.array(values, DTYPES[spec.datatype])
    if array.size == 0:  # no rows: the declared shape with 0 for the open size
        array = array.reshape([0 if d < 0 else d for d in spec.shape])
    return Tensor(spec.name, spec.datatype, array.shape, array)


def _strings(items: list[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, s in enumerate(items):
        out[i] = s.encode("utf-8")
    return out


def as_tensor(name: str, array: np.ndarray) -> Tensor:
    return Tensor(name, datatype_of(array.dtype), array.shape, array)
