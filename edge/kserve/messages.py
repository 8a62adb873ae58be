"""An inference request and its response, as every transport hands them to `infer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.kserve.tensors import Tensor


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    #: REST: send this output as binary data after the JSON (the binary tensor data extension)
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str  # "" for the version the model serves now
    inputs: list[Tensor]
    #: empty: every output
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
