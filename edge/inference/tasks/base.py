"""The plugin interface every model task implements.

A task turns a decoded `Image` into the network's input tensor and the network's outputs into
the result payload. It never runs the network itself: the engine owns sessions, batching and
threads. Both methods run on worker threads, never on the event loop, and must be thread-safe
(keep per-call state in `ctx`, not on `self`).

A task also declares what its payloads carry as tensors (`rows`, `outputs`), so that a
protocol serving results as tensors (KServe's pipeline form) reads them from the task rather
than knowing every task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec


@dataclass(frozen=True)
class Output:
    """One tensor a task's payloads carry: one element per row of the payload's `Task.rows`
    list, each row's `field`, stacked."""

    name: str
    #: the Open Inference Protocol's datatype: "FP32", "INT64", "BYTES" (strings, UTF-8)
    datatype: str
    #: -1: the number of rows
    shape: tuple[int, ...]
    #: the key of each row that fills it
    field: str


#: what every detection task's rows carry: box x1, y1, x2, y2 in frame pixels, score, label
BOXES = Output("boxes", "FP32", (-1, 4), "box")
SCORES = Output("scores", "FP32", (-1,), "score")
LABELS = Output("labels", "BYTES", (-1,), "label")
#: a tracked model's detections' track IDs (model.toml `[tracking]`, edge/inference/tracking.py)
TRACK_IDS = Output("track_ids", "INT64", (-1,), "track_id")


class Task(ABC):
    #: the name model.toml uses in `task = "..."`
    name: ClassVar[str]
    #: what `/v1/models` reports as the model's task ("face_detection", "text_detection", ...)
    kind: ClassVar[str]
    #: the payload's list of rows ("detections", "classes") that `outputs` are read from
    rows: ClassVar[str] = "detections"
    #: the tensors the payloads carry, in the order a protocol serves them; a tracked
    #: detector's instances add TRACK_IDS
    outputs: tuple[Output, ...] = ()

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        if spec.tracking.enabled and self.rows == "detections":
            self.outputs = (*self.outputs, TRACK_IDS)

    def decode_hint(self) -> tuple[int, int]:
        """The smallest (width, height) the decoder may scale the frame down to, at no loss.
        A model with later stages crops the frame itself: it is decoded at full size."""
        if self.spec.stages:
            return (1 << 30, 1 << 30)
        return (self.spec.input_width, self.spec.input_height)

    @abstractmethod
    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        """One sample's input tensor (no batch axis) and the context postprocess needs."""

    @abstractmethod
    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        """One sample's outputs (batch axis removed) to the payload merged into the result."""
