"""Refuse ONNX files whose tensors live outside the file (ONNX "external data").

A model in the repository must be one self-contained file: ONNX Runtime resolves an external
data location against a directory it chooses (the model's own, or the working directory when
the model is given as bytes, depending on its version), so a path such as ``../../x`` or
``/etc/x`` could make it read files the operator never put in the repository. Whether a given
onnxruntime release refuses such paths itself varies, so the gateway checks first.

The check reads the protobuf wire format directly (no ``onnx`` package at run time): every
TensorProto reachable from the graph (initializers, sparse initializers, node attributes,
subgraphs, functions) with ``data_location = EXTERNAL`` is refused.
"""

from __future__ import annotations

from collections.abc import Iterator

# field numbers from onnx.proto
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_MAX_DEPTH = 32  # subgraphs nest (If inside Loop ...); deeper than this is refused, not followed


class ExternalData(ValueError):
    """The file is not self-contained, or not an ONNX protobuf the check can follow."""


def check_self_contained(data: bytes) -> None:
    """Raise ExternalData if any tensor in the model keeps its data in another file."""
    view = memoryview(data)
    for number, value in _fields(view):
        if number == _MODEL_GRAPH and isinstance(value, memoryview):
            _graph(value, 0)
        elif number == _MODEL_FUNCTIONS and isinstance(value, memoryview):
            for n, node in _fields(value):
                if n == _FUNCTION_NODE and isinstance(node, memoryview):
                    _node(node, 0)


def _graph(buf: memoryview, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ExternalData(f"subgraphs nested deeper than {_MAX_DEPTH}")
    for number, value in _fields(buf):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_NODE:
            _node(value, depth)
        elif number == _GRAPH_INITIALIZER:
            _tensor(value)
        elif number == _GRAPH_SPARSE:
            _sparse(value)


def _node(buf: memoryview, depth: int) -> None:
    for number, attr in _fields(buf):
        if number != _NODE_ATTRIBUTE or not isinstance(attr, memoryview):
            continue
        for n, value in _fields(attr):
            if not isinstance(value, memoryview):
                continue
            if n in (_ATTR_T, _ATTR_TENSORS):
                _tensor(value)
            elif n in (_ATTR_G, _ATTR_GRAPHS):
                _graph(value, depth + 1)
            elif n in (_ATTR_SPARSE, _ATTR_SPARSES):
                _sparse(value)


def _sparse(buf: memoryview) -> None:
    for number, value in _fields(buf):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and isinstance(value, memoryview):
            _tensor(value)


def _tensor(buf: memoryview) -> None:
    external, location = False, ""
    for number, value in _fields(buf):
        if number == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
            external = True
        elif number == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = dict(_fields(value))
            key, where = entry.get(1), entry.get(2)
            if isinstance(key, memoryview) and bytes(key) == b"location":
                if isinstance(where, memoryview):
                    location = bytes(where[:200]).decode("utf-8", "replace")
    if external:
        raise ExternalData(
            f"a tensor keeps its data in an external file ({location or 'unnamed'}); external "
            "data is refused (save the model as one file)"
        )


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, varint value or length-delimited bytes) for each field; fixed-width
    fields are skipped. Raises ExternalData on a truncated or malformed buffer."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > end:
                raise ExternalData("not a valid ONNX file (truncated field)")
            yield number, buf[i : i + size]
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ExternalData(f"not a valid ONNX file (wire type {wire})")
    if i != end:
        raise ExternalData("not a valid ONNX file (truncated field)")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ExternalData("not a valid ONNX file (bad varint)")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
