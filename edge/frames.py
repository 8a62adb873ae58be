"""The nouns that flow through the pipeline: a frame in (encoded, or already decoded by a
transport), its answer out (a result, an error or a drop notice), typed until a transport's
`Wire` encodes it.

A `Frame` carries its own identity (`stream_id`, `seq`) and clock (`received_at`,
`time.monotonic()` when the transport took it off the wire), so every stage can decide
staleness on its own and every reply can echo what it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np


class Picture(Protocol):
    """A frame its transport received already decoded (WebRTC video); pixels on demand.

    `rgb` runs on a worker thread, once per frame, so frames that are dropped cost nothing.
    """

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def rgb(self, width: int, height: int) -> np.ndarray:
        """HxWx3 uint8 RGB pixels scaled to `width` x `height`; ValueError if it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class RawInput:
    """A frame that is already the network's input (KServe's raw model form): one sample
    without the batch axis, checked by its transport against the model. It skips decode,
    preprocess and postprocess and batches with image frames of the same model; its result
    carries the network's outputs for it (`Result.outputs`)."""

    array: np.ndarray


@dataclass(frozen=True, slots=True)
class Frame:
    """One image as a client sent it: encoded bytes (JPEG, PNG) or a decoded `Picture`; or
    a network input tensor (`RawInput`)."""

    stream_id: str
    seq: int
    received_at: float
    data: bytes | Picture | RawInput


@dataclass(frozen=True, slots=True)
class Image:
    """A decoded frame: RGB pixels, maybe decoded at reduced scale, and the frame's real size.

    `pixels` is HxWx3 uint8. `width`/`height` are the size of the frame as the client sent it;
    tasks map boxes back into that space so clients never see the decode scale.
    """

    pixels: np.ndarray
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Timing:
    queue_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class Result:
    """What a model made of one frame, as every transport gets it; each encodes it once, for
    its wire (docs/protocol.md's JSON, protobuf, KServe tensors).

    `payload` is the task's: `{"detections": [...]}` for detectors, `{"classes": [...]}` for
    classifiers. A raw input (`RawInput`) has no payload and no size: its answer is
    `outputs`, the network's outputs for that one sample (without the batch axis).
    """

    seq: int
    model: str  # name@version of the model that answered
    width: int
    height: int
    timing: Timing
    payload: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[np.ndarray, ...] | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """A frame (or, with no `seq`, a control message) that could not be served: `code` and
    `message` go on the wire; `stage` (decode, preprocess, inference, postprocess, protocol)
    labels the error metric. The stream goes on."""

    seq: int | None
    code: str
    message: str
    stage: str = "protocol"


@dataclass(frozen=True, slots=True)
class Dropped:
    """Frames that got no result, and why (stale, overload, deadline, rate_limited, ...)."""

    seqs: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A message about the stream rather than a frame (hello, config, stats, pong, credit,
    goaway): its type and its fields, as docs/protocol.md names them."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)


#: how a frame is answered: exactly one of these per frame taken
Answer = Result | Error | Dropped

M_co = TypeVar("M_co", covariant=True)


class Wire(Protocol[M_co]):
    """A transport's encoding of the typed replies into its own messages (JSON text, a list
    of protobuf responses, ...). A stream's outbox queues and sends what it makes.

    `result` and `error` run on the worker thread that answered the frame, so the expensive
    encoding stays off the event loop; an exception from `result` (JSON refuses NaN) answers
    the frame with `postprocess_failed` instead. `dropped` and `notice` run on the loop.
    """

    def result(self, result: Result, /) -> M_co: ...

    def error(self, error: Error, /) -> M_co: ...

    def dropped(self, dropped: Dropped, /) -> M_co: ...

    def notice(self, notice: Notice, /) -> M_co: ...


class FrameError(Exception):
    """A frame that cannot be served; `code` goes on the wire, the stream goes on."""

    def __init__(self, code: str, message: str, stage: str = "decode") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stage = stage
