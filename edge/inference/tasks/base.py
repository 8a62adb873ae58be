"""The plugin interface every model task implements.

A task turns a decoded `Image` into the network's input tensor and the network's outputs into
the result payload. It never runs the network itself: the engine owns sessions, batching and
threads. Both methods run on worker threads, never on the event loop, and must be thread-safe
(keep per-call state in `ctx`, not on `self`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from edge.frames import Image
from edge.inference.modelspec import ModelSpec


class Task(ABC):
    #: the name model.toml uses in `task = "..."`
    name: ClassVar[str]
    #: what `/v1/models` reports as the model's task ("face_detection", "text_detection", ...)
    kind: ClassVar[str]

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def decode_hint(self) -> tuple[int, int]:
        """The smallest (width, height) the decoder may scale the frame down to, at no loss."""
        return (self.spec.input_width, self.spec.input_height)

    @abstractmethod
    def preprocess(self, image: Image) -> tuple[np.ndarray, Any]:
        """One sample's input tensor (no batch axis) and the context postprocess needs."""

    @abstractmethod
    def postprocess(
        self, outputs: Sequence[np.ndarray], ctx: Any, image: Image, threshold: float
    ) -> dict[str, Any]:
        """One sample's outputs (batch axis removed) to the payload merged into the result."""
