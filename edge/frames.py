"""The nouns that flow through the pipeline: a frame in (encoded, or already decoded by a
transport), a result out.

A `Frame` carries its own identity (`stream_id`, `seq`) and clock (`received_at`,
`time.monotonic()` when the transport took it off the wire), so every stage can decide
staleness on its own and every reply can echo what it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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
    carries the network's outputs for it (`codec.arrays`)."""

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
class Outcome:
    """What a task made of one frame: the task-specific payload merged into the result message.

    For detectors `payload` is `{"detections": [...]}`; for classifiers `{"classes": [...]}`.
    """

    payload: dict[str, Any] = field(default_factory=dict)


class FrameError(Exception):
    """A frame that cannot be served; `code` goes on the wire, the stream goes on."""

    def __init__(self, code: str, message: str, stage: str = "decode") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stage = stage
