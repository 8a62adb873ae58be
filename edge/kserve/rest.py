"""The REST body of an infer call: JSON, optionally followed by binary tensor data.

With the binary tensor data extension the body is the JSON header, whose length is in the
`Inference-Header-Content-Length` HTTP header, then each input that has a `binary_data_size`
parameter, in the order of the inputs, back to back. Outputs come back the same way when the
request asks (`"parameters": {"binary_data": true}` on an output, or `binary_data_output` on
the request; an output that asks neither way is JSON). A BYTES input sent as JSON may say
`"parameters": {"content_type": "base64"}`: its strings are then base64 (an encoded image is
not UTF-8 text).

What a JSON header costs is bounded before it is parsed (`check_cost`): its bytes by
`max_json_bytes`, its nesting depth and its count of values and of arrays and objects by a
scan of the bytes in numpy, so a body of a million empty arrays is refused before `json.loads`
would build them.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from edge.kserve.errors import KServeError, invalid
from edge.kserve.messages import InferRequest, InferResponse, RequestedOutput
from edge.kserve.tensors import (
    MAX_DIMS,
    Tensor,
    check_header,
    from_raw,
    from_values,
    to_raw,
    to_values,
)
from edge.settings import Settings

HEADER = "Inference-Header-Content-Length"
MAX_INPUTS = 64
#: nesting of a JSON header: the request, its inputs, an input, its data nested MAX_DIMS deep
MAX_JSON_DEPTH = 4 + MAX_DIMS
#: values (numbers, strings, ...) in a JSON header: 256 x 256 x 3 of them and some room
MAX_JSON_VALUES = 256 * 1024
#: arrays and objects in a JSON header: the nested data of a [1, 128, 128, 3] tensor and room
MAX_JSON_CONTAINERS = 64 * 1024
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def parse_request(
    model: str,
    version: str,
    body: bytes,
    header_length: str | None,
    max_element_bytes: int,
    max_json_bytes: int = Settings.max_json_bytes,
) -> InferRequest:
    """The request a body holds, every tensor checked; a KServeError saying what is wrong
    (its JSON header's cost checked before it is parsed)."""
    binary: bytes | memoryview
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or len(header_length) > 12:
            raise invalid(f"{HEADER} must be a byte count, not {header_length[:40]!r}")
        n = int(header_length)
        if n > len(body):
            raise invalid(f"{HEADER} is {n}, but the body is only {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
    check_cost(head, max_json_bytes)
    try:
        obj = json.loads(head)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise invalid(f"the request is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise invalid("the request must be a JSON object with `inputs`")
    params = _parameters(obj, "the request")
    request_id = obj.get("id", "")
    if not isinstance(request_id, str):
        raise invalid("id must be a string")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not 0 < len(raw_inputs) <= MAX_INPUTS:
        raise invalid(f"inputs must be a list of 1 to {MAX_INPUTS} tensors")
    inputs = []
    at = 0
    for raw in raw_inputs:
        tensor, used = _input(raw, binary, at, max_element_bytes)
        inputs.append(tensor)
        at += used
    if at != len(binary):
        raise invalid(f"{len(binary) - at} bytes of binary data after the inputs' binary_data_size")
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise invalid("binary_data_output must be true or false")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=_outputs(obj.get("outputs"), binary_all),
        id=request_id,
        parameters=params,
    )


def check_cost(head: bytes, max_json_bytes: int) -> None:
    """Refuse a JSON text whose parse would cost more than a request may: over
    `max_json_bytes` (413), nested deeper than MAX_JSON_DEPTH or with more values or
    containers than MAX_JSON_VALUES and MAX_JSON_CONTAINERS (400). Brackets, braces and
    commas inside strings are not counted; numpy scans the bytes without building anything."""
    if len(head) > max_json_bytes:
        raise KServeError(
            "too_large",
            f"the JSON of the request is {len(head)} bytes, more than {max_json_bytes}: send "
            "large tensors as binary data (the binary tensor data extension)",
        )
    # escaped backslashes, then escaped quotes, are no string delimiters
    text = np.frombuffer(head.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    outside = (np.cumsum(text == ord('"'), dtype=np.int32) & 1) == 0
    opens = ((text == ord("[")) | (text == ord("{"))) & outside
    containers = int(np.count_nonzero(opens))
    if containers > MAX_JSON_CONTAINERS:
        raise invalid(f"the JSON has more than {MAX_JSON_CONTAINERS} arrays and objects")
    values = int(np.count_nonzero((text == ord(",")) & outside)) + 1
    if values > MAX_JSON_VALUES:
        raise invalid(f"the JSON has more than {MAX_JSON_VALUES} values")
    if containers > MAX_JSON_DEPTH:
        closes = ((text == ord("]")) | (text == ord("}"))) & outside
        step = opens.astype(np.int8) - closes.astype(np.int8)
        if int(np.cumsum(step, dtype=np.int32).max()) > MAX_JSON_DEPTH:
            raise invalid(f"the JSON is nested deeper than {MAX_JSON_DEPTH}")


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise invalid(f"parameters of {what} must be a JSON object")
    return params


def _input(
    raw: object, binary: bytes | memoryview, at: int, max_element_bytes: int
) -> tuple[Tensor, int]:
    """One input, and how many bytes of the binary data it took from `at`."""
    if not isinstance(raw, dict):
        raise invalid("each input must be a JSON object with name, datatype and shape")
    name, datatype, shape = check_header(raw.get("name"), raw.get("datatype"), raw.get("shape"))
    params = _parameters(raw, f"input {name!r}")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input {name!r}: binary_data_size must be an integer >= 0")
        if "data" in raw:
            raise invalid(f"input {name!r} has both data and binary_data_size")
        if at + size > len(binary):
            raise invalid(
                f"input {name!r}: binary_data_size {size} runs past the body "
                f"({len(binary) - at} bytes of binary data left)"
            )
        chunk = binary[at : at + size]
        return from_raw(name, datatype, shape, chunk, max_element_bytes, params), size
    if "data" not in raw:
        raise invalid(f"input {name!r} has neither data nor binary_data_size")
    data = raw["data"]
    if datatype == "BYTES" and params.get("content_type") == "base64":
        data = _unbase64(name, data)
    return from_values(name, datatype, shape, data, max_element_bytes, params), 0


def _unbase64(name: str, data: object) -> list[bytes]:
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise invalid(f"input {name!r}: base64 data must be a flat list of strings")
    try:
        return [base64.b64decode(v, validate=True) for v in data]
    except (binascii.Error, ValueError) as e:
        raise invalid(f"input {name!r}: not base64: {e}") from None


def _outputs(raw: object, binary_all: bool) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_INPUTS:
        raise invalid(f"outputs must be a list of at most {MAX_INPUTS} objects")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each requested output must be an object with a name")
        binary = _parameters(item, f"output {item['name']!r}").get("binary_data", binary_all)
        if not isinstance(binary, bool):
            raise invalid(f"output {item['name']!r}: binary_data must be true or false")
        out.append(RequestedOutput(item["name"], binary))
    return out


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    wanted = {o.name: o.binary for o in request.outputs}
    binary_all = bool(request.parameters.get("binary_data_output", False))
    outputs = []
    blobs = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if wanted.get(tensor.name, binary_all):
            blob = to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_values(tensor)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = response.parameters
    head["outputs"] = outputs
    text = _dumps(head).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
