"""Tensors as the Open Inference Protocol carries them: a name, a datatype, a shape and the
elements, either as JSON values (REST `data`, gRPC typed `contents`) or as raw bytes (the REST
binary tensor data extension, gRPC `raw_input_contents`).

Raw bytes are little-endian, row-major; a BYTES tensor's raw form is each element as a 4-byte
little-endian length and then its bytes. Everything a client claims is checked against what it
sent before any array is made: the element count against the values or bytes that are there
(a shape is never allocated on its word), each datatype's values against the type, each BYTES
element against a size limit. A failure is a `KServeError` naming the tensor and what is wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.kserve.errors import KServeError, invalid

#: the fixed-size datatypes, as little-endian numpy types
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*DTYPES, "BYTES")
#: ONNX Runtime's type names (`NodeArg.type`) as protocol datatypes
ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
MAX_DIMS = 16
MAX_NAME = 256
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """One input or output. `data` has `shape`; for BYTES it is an object array of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for a numpy dtype (object arrays are BYTES)."""
    if dtype == np.dtype(object):
        return "BYTES"
    for name, dt in DTYPES.items():
        if dt == dtype.newbyteorder("<") or dt == dtype:
            return name
    raise KServeError("internal", f"no protocol datatype for {dtype}")


def check_header(name: object, datatype: object, shape: object) -> tuple[str, str, tuple[int, ...]]:
    """A tensor's name, datatype and shape as a client sent them, or a KServeError."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise invalid(f"a tensor name must be a string of 1 to {MAX_NAME} characters")
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise invalid(f"tensor {name!r}: datatype {datatype!r} is not one of {known}")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise invalid(f"tensor {name!r}: shape must be a list of at most {MAX_DIMS} sizes")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise invalid(f"tensor {name!r}: shape {shape!r} must hold integers >= 0")
    assert isinstance(datatype, str)
    return name, datatype, tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_raw(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    raw: bytes | memoryview,
    max_element_bytes: int,
    parameters: dict[str, Any] | None = None,
) -> Tensor:
    """A tensor from its raw bytes, which must hold exactly `shape`'s elements."""
    count = element_count(shape)
    params = parameters or {}
    if datatype == "BYTES":
        elements = _bytes_elements(name, count, raw, max_element_bytes)
        return Tensor(name, datatype, shape, elements.reshape(shape), params)
    dtype = DTYPES[datatype]
    need = count * dtype.itemsize
    if len(raw) != need:
        raise invalid(
            f"tensor {name!r}: {len(raw)} bytes of data, but shape {list(shape)} of {datatype} "
            f"needs {need}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return Tensor(name, datatype, shape, array, params)


def _bytes_elements(
    name: str, count: int, raw: bytes | memoryview, max_element_bytes: int
) -> np.ndarray:
    """`count` length-prefixed elements that fill `raw` exactly."""
    if count * _LENGTH.size > len(raw):
        raise invalid(
            f"tensor {name!r}: {count} BYTES elements need at least {count * 4} bytes, "
            f"got {len(raw)}"
        )
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    at = 0
    for i in range(count):
        if at + 4 > len(view):
            raise invalid(f"tensor {name!r}: BYTES element {i} has no length (data ends)")
        (n,) = _LENGTH.unpack_from(view, at)
        if n > max_element_bytes:
            raise KServeError(
                "too_large",
                f"tensor {name!r}: BYTES element {i} is {n} bytes, more than {max_element_bytes}",
            )
        at += 4
        if at + n > len(view):
            raise invalid(
                f"tensor {name!r}: BYTES element {i} claims {n} bytes, only {len(view) - at} left"
            )
        out[i] = bytes(view[at : at + n])
        at += n
    if at != len(view):
        raise invalid(f"tensor {name!r}: {len(view) - at} bytes left after {count} BYTES elements")
    return out


def from_values(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    values: object,
    max_element_bytes: int,
    parameters: dict[str, Any] | None = None,
) -> Tensor:
    """A tensor from JSON-like values: a flat row-major list (or nested lists) of numbers,
    booleans or (BYTES) strings and bytes; exactly `shape`'s element count of them."""
    count = element_count(shape)
    flat = _flatten(name, values, count)
    if len(flat) != count:
        raise invalid(f"tensor {name!r}: {len(flat)} values, but shape {list(shape)} holds {count}")
    params = parameters or {}
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            b = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v
            if not isinstance(b, bytes):
                raise invalid(f"tensor {name!r}: BYTES values must be strings")
            if len(b) > max_element_bytes:
                raise KServeError(
                    "too_large",
                    f"tensor {name!r}: BYTES element {i} is {len(b)} bytes, more "
                    f"than {max_element_bytes}",
                )
            out[i] = b
        return Tensor(name, datatype, shape, out.reshape(shape), params)
    dtype = DTYPES[datatype]
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in flat)
    elif dtype.kind == "f":
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat)
    else:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
    if not ok:
        raise invalid(f"tensor {name!r}: values must all be of type {datatype}")
    try:
        array = np.array(flat, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError, TypeError) as e:
        raise invalid(f"tensor {name!r}: values do not fit {datatype}: {e}") from None
    return Tensor(name, datatype, shape, array, params)


def _flatten(name: str, values: object, limit: int) -> list[Any]:
    """Row-major elements of a list that may be nested; at most `limit` + 1 gathered."""
    if not isinstance(values, list | tuple):
        raise invalid(f"tensor {name!r}: data must be a list")
    if all(not isinstance(v, list | tuple) for v in values):
        return list(values)
    out: list[Any] = []
    stack = [iter(values)]
    while stack and len(out) <= limit:
        for v in stack[-1]:
            if isinstance(v, list | tuple):
                if len(stack) > MAX_DIMS:
                    raise invalid(f"tensor {name!r}: data nested deeper than {MAX_DIMS}")
                stack.append(iter(v))
                break
            out.append(v)
            if len(out) > limit:
                break
        else:
            stack.pop()
    return out


def to_raw(tensor: Tensor) -> bytes:
    """A tensor's raw little-endian bytes (BYTES: length-prefixed elements)."""
    if tensor.datatype == "BYTES":
        parts = []
        for b in tensor.data.ravel():
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()


def to_values(tensor: Tensor) -> list[Any]:
    """A tensor's elements as a flat list for JSON; a KServeError if JSON cannot hold them."""
    if tensor.datatype == "BYTES":
        try:
            return [b.decode("utf-8") for b in tensor.data.ravel()]
        except UnicodeDecodeError:
            raise invalid(
                f"output {tensor.name!r} is not UTF-8 text, which JSON cannot carry; ask for it "
                "as binary data"
            ) from None
    if tensor.data.dtype.kind == "f" and not np.isfinite(tensor.data).all():
        raise invalid(
            f"output {tensor.name!r} holds NaN or infinity, which JSON cannot carry; ask for "
            "it as binary data"
        )
    values: list[Any] = tensor.data.ravel().tolist()
    return values
