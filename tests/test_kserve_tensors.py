"""Units of the KServe v2 core: tensors from JSON values and raw bytes, the REST body with the
binary tensor data extension, and what a protocol model name means. Every claim a client makes
(shape, datatype, sizes) is checked against what it sent, and refused with a clear message."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edge.kserve.errors import KServeError
from edge.kserve.messages import InferRequest, InferResponse, RequestedOutput
from edge.kserve.metadata import Target
from edge.kserve.rest import encode_response, parse_request
from edge.kserve.tensors import Tensor, from_raw, from_values, to_raw, to_values

pytestmark = pytest.mark.unit
LIMIT = 1024


def body(head: dict, *blobs: bytes) -> tuple[bytes, str | None]:
    text = json.dumps(head).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), str(len(text))


def parse(head: dict, *blobs: bytes) -> InferRequest:
    data, length = body(head, *blobs)
    return parse_request("m", "", data, length, LIMIT)


def refused(kind: str, head: dict, *blobs: bytes) -> str:
    with pytest.raises(KServeError) as e:
        parse(head, *blobs)
    assert e.value.kind == kind, e.value.message
    return e.value.message


def test_json_and_binary_inputs_give_the_same_tensor() -> None:
    """Guards against the two encodings of one tensor disagreeing (byte order, row order)."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    as_json = parse(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}]}
    )
    nested = parse(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.tolist()}]}
    )
    raw = x.astype("<f4").tobytes()
    as_binary = parse(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [3, 4],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        },
        raw,
    )
    for req in (as_json, nested, as_binary):
        np.testing.assert_array_equal(req.inputs[0].data, x)
        assert req.inputs[0].shape == (3, 4)


def test_bytes_elements_are_length_prefixed() -> None:
    elements = [b"", b"abc", b"\xff\xd8\xff"]
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    t = from_raw("b", "BYTES", (3,), raw, LIMIT)
    assert list(t.data) == elements
    assert to_raw(t) == raw


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0]}, "3 values"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": ["1", "2"]}, "type FP32"),
        ({"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}, "do not fit"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, "type INT32"),
        ({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}, "type BOOL"),
        ({"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}, "datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": []}, "shape"),
        ({"name": "x", "datatype": "FP32", "shape": [True], "data": [1.0]}, "shape"),
        ({"name": "", "datatype": "FP32", "shape": [1], "data": [1.0]}, "name"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "neither data"),
        ({"name": "x", "datatype": "FP32", "shape": [10**12, 10**12], "data": [1.0]}, "1 values"),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "data": [[[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]]],
            },
            "deeper",
        ),
    ],
)
def test_bad_json_tensors_are_refused_with_a_reason(tensor: dict, message: str) -> None:
    assert message in refused("invalid", {"inputs": [tensor]})


def test_lying_binary_sizes_are_refused() -> None:
    """Guards against trusting binary_data_size or the header length over the body."""
    x = np.zeros(4, np.float32).tobytes()

    def head(size: int, shape: list[int] | None = None) -> dict:
        params = {"binary_data_size": size}
        return {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": shape or [4], "parameters": params}
            ]
        }

    assert "runs past the body" in refused("invalid", head(32), x)  # claims more than sent
    assert "4 bytes of binary data after" in refused("invalid", head(16), x + bytes(4))
    assert "needs 16" in refused("invalid", head(8, [4]), x[:8])  # shape needs more bytes
    data, length = body(head(16), x)
    with pytest.raises(KServeError, match="only"):  # the header length claims past the body
        parse_request("m", "", data, str(len(data) + 1), LIMIT)
    with pytest.raises(KServeError, match="byte count"):
        parse_request("m", "", data, "-1", LIMIT)
    assert length is not None


def test_huge_bytes_elements_are_refused_before_they_are_read() -> None:
    """A BYTES element's length prefix claiming gigabytes costs nothing: refused as too large."""
    raw = struct.pack("<I", 2**31) + b"x" * 8
    params = {"binary_data_size": len(raw)}
    head = {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "parameters": params}]}
    assert "more than 1024" in refused("too_large", head, raw)
    big = {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x" * 2000]}]}
    assert "more than 1024" in refused("too_large", big)
    # a prefix within the limit but past the data
    raw = struct.pack("<I", 100) + b"x" * 8
    params = {"binary_data_size": len(raw)}
    head = {"inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "parameters": params}]}
    assert "claims 100 bytes" in refused("invalid", head, raw)
    # more elements claimed than the bytes could hold
    head["inputs"][0]["shape"] = [10**9]
    assert "at least" in refused("invalid", head, raw)


def test_base64_bytes_in_json() -> None:
    req = parse(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": ["/9j/"],
                    "parameters": {"content_type": "base64"},
                }
            ]
        }
    )
    assert req.inputs[0].data[0] == b"\xff\xd8\xff"


def test_requested_outputs_and_binary_flags() -> None:
    t = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    req = parse(
        {
            "inputs": [t],
            "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
        }
    )
    assert req.outputs == [RequestedOutput("a", True), RequestedOutput("b", False)]
    req = parse(
        {"inputs": [t], "parameters": {"binary_data_output": True}, "outputs": [{"name": "b"}]}
    )
    assert req.outputs == [RequestedOutput("b", True)]


def test_response_json_and_binary() -> None:
    """Binary outputs follow the JSON header in order, each with its binary_data_size."""
    a = Tensor("a", "FP32", (2,), np.array([1.5, 2.5], np.float32))
    labels = np.empty(1, object)
    labels[0] = b"face"
    b = Tensor("b", "BYTES", (1,), labels)
    response = InferResponse("m", "1", [a, b], id="r1")
    t = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    data, length = encode_response(response, parse({"inputs": [t]}))
    assert length is None
    assert json.loads(data)["outputs"][1] == {
        "name": "b",
        "datatype": "BYTES",
        "shape": [1],
        "data": ["face"],
    }
    req = parse(
        {
            "inputs": [t],
            "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
        }
    )
    data, length = encode_response(response, req)
    assert length is not None
    head = json.loads(data[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(data[length:], "<f4").tolist() == [1.5, 2.5]


def test_outputs_json_cannot_carry_are_refused_in_json_only() -> None:
    nan = Tensor("a", "FP32", (1,), np.array([np.nan], np.float32))
    with pytest.raises(KServeError, match="binary"):
        to_values(nan)
    assert len(to_raw(nan)) == 4


def test_from_values_bytes_takes_bytes_and_text() -> None:
    t = from_values("b", "BYTES", (2,), [b"\x00", "é"], LIMIT)
    assert list(t.data) == [b"\x00", "é".encode()]


@pytest.mark.parametrize(
    "text, name, raw",
    [
        ("blazeface", "blazeface", False),
        ("blazeface.raw", "blazeface", True),
        ("a-b_c.raw", "a-b_c", True),
    ],
)
def test_model_names(text: str, name: str, raw: bool) -> None:
    target = Target.parse(text)
    assert (target.name, target.raw, target.public) == (name, raw, text)


@pytest.mark.parametrize("text", ["", ".raw", "../x", "a b", "x.raw.raw", "blazeface@1"])
def test_bad_model_names_are_not_found(text: str) -> None:
    with pytest.raises(KServeError) as e:
        Target.parse(text)
    assert e.value.kind == "not_found"
