"""KServe v2's gRPC messages (proto/grpc_predict_v2.proto) to and from the protocol's
request and response (edge.kserve.messages), every tensor checked (edge.kserve.tensors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from edge.kserve.errors import invalid
from edge.kserve.messages import InferRequest, InferResponse, RequestedOutput
from edge.kserve.tensors import check_header, element_count, from_raw, from_values, to_raw
from edge.transports.grpc.gen import grpc_predict_v2_pb2 as pb

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
#: the longest request id kept
MAX_ID = 256
#: requests with more typed values than this, or more raw bytes than INLINE_BYTES, are
#: converted off the event loop (`converted_off_loop`)
INLINE_VALUES = 16 * 1024
INLINE_BYTES = 64 * 1024


class Malformed:
    """A request whose bytes protobuf cannot parse, or that are more than its method takes."""

    def __init__(self, error: Exception | str, too_large: bool = False) -> None:
        self.error = str(error)
        self.too_large = too_large


def parser(cls: Any, limit: int) -> Callable[[bytes], Any]:
    """Bytes to a `cls` message; a Malformed one when they do not parse or are over `limit`
    (refused before protobuf builds anything of them)."""

    def parse(data: bytes) -> Any:
        if len(data) > limit:
            return Malformed(f"{len(data)} bytes, more than {limit} for this call", True)
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Malformed(e)

    return parse


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
            values = getattr(t.contents, CONTENTS[datatype])
            if len(values) != element_count(shape):  # refused before any conversion
                raise invalid(
                    f"tensor {name!r}: {len(values)} values, but shape {list(shape)} "
                    f"holds {element_count(shape)}"
                )
            inputs.append(
                from_values(name, datatype, shape, _listed(values), max_element_bytes, params)
            )
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


def _listed(values: Any) -> list[Any]:
    """A repeated field as a list, a slice at a time: each slice is one short hold of the
    interpreter, so the event loop gets its turn while a thread converts millions."""
    out: list[Any] = []
    for at in range(0, len(values), INLINE_VALUES):
        out.extend(values[at : at + INLINE_VALUES])
    return out


def typed_values(request: pb.ModelInferRequest) -> int:
    """How many values the request's inputs carry in typed `contents`."""
    if request.raw_input_contents:
        return 0
    return sum(
        len(getattr(t.contents, CONTENTS.get(t.datatype, "bytes_contents"))) for t in request.inputs
    )


def converted_off_loop(request: pb.ModelInferRequest) -> bool:
    """Whether converting `request` to tensors costs enough to go to a thread: millions of
    typed values become Python objects first, and would stall every call of the process."""
    raw = sum(len(r) for r in request.raw_input_contents)
    return raw > INLINE_BYTES or typed_values(request) > INLINE_VALUES


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
