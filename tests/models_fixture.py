"""Real model weights for tests: pulled once per test process, then run as the engine would.

`pulled_models()` fetches the pinned weights into the repository's `models/` (a no-op when
they are there and intact); `run_model(name, image)` builds the model's task from its
committed model.toml and runs preprocess, ONNX Runtime and postprocess on one image.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks import Task, get_task
from edge.models.pull import pull

MODELS = Path(__file__).resolve().parents[1] / "models"


@functools.cache
def pulled_models() -> Path:
    """The repository's model directory, with every pinned model's weights present."""
    pull(MODELS)
    return MODELS


@functools.cache
def loaded(name: str) -> tuple[Task, ort.InferenceSession]:
    """The task plugin and a single-threaded CPU session for model `name`."""
    spec = ModelSpec.load(pulled_models() / name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(MODELS / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return get_task(spec.task)(spec), session


def run_model(name: str, image: Image, threshold: float | None = None) -> dict[str, Any]:
    """One image through the model's task and network; the payload a client would get."""
    task, session = loaded(name)
    tensor, ctx = task.preprocess(image)
    outputs = session.run(None, {session.get_inputs()[0].name: tensor[None]})
    th = task.spec.threshold if threshold is None else threshold
    return task.postprocess([o[0] for o in outputs], ctx, image, th)


def as_image(pixels: np.ndarray) -> Image:
    """Pixels decoded at full size: the frame is exactly what the pixels show."""
    return Image(pixels=pixels, width=pixels.shape[1], height=pixels.shape[0])
