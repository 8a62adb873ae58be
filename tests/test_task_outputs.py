"""Each task declares the tensors its results carry (`Task.outputs`); KServe's pipeline form
serves exactly those, in metadata and in every response.

Guards against a task added without its outputs (KServe would serve only `result`), a
declaration the payloads do not fill (a KeyError, or a tensor of the wrong shape, on the first
KServe request), and the metadata drifting from what existing clients were told.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge.frames import Image, Result, Timing
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks import TASKS
from edge.inference.tasks.crops import RegionTask
from edge.kserve.infer import pipeline_tensors
from edge.kserve.metadata import Target, model_metadata
from edge.kserve.tensors import DATATYPES

pytestmark = pytest.mark.unit

#: what `GET /v2/models/{name}` served for each task before tasks declared their outputs
DETECTIONS = [("boxes", "FP32", [-1, 4]), ("scores", "FP32", [-1]), ("labels", "BYTES", [-1])]
RESULT = ("result", "BYTES", [1])
PUBLISHED = {
    "blazeface": [*DETECTIONS, ("keypoints", "FP32", [-1, 6, 2]), RESULT],
    "db_text": [*DETECTIONS, ("polygons", "FP32", [-1, 4, 2]), RESULT],
    "yolo": [*DETECTIONS, RESULT],
    "classification": [
        ("classes", "INT64", [-1]),
        ("scores", "FP32", [-1]),
        ("labels", "BYTES", [-1]),
        RESULT,
    ],
}


class OneModel:
    """A repository serving one model, version 1, whose task is `task`."""

    def __init__(self, task: Any) -> None:
        self.model = SimpleNamespace(task=task, stages=[])

    def names(self) -> list[str]:
        return ["m"]

    def resolve(self, route: Any) -> Any:
        return self.model

    def route(self, asked: Any, session: str | None = None) -> Any:
        return SimpleNamespace(route=asked, model=self.model)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": "m", "version": "1", "state": "ready"}]


#: the tasks whose payloads are a frame's answer: later stages (`RegionTask`) give fields that
#: are merged into these rows instead (edge/inference/stages.py)
FIRST_STAGE = sorted(n for n, cls in TASKS.items() if not issubclass(cls, RegionTask))


def metadata_outputs(task: Any) -> list[tuple[str, str, list[int]]]:
    meta = model_metadata(OneModel(task), Target("m", raw=False), "")  # type: ignore[arg-type]
    return [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]]


@pytest.mark.parametrize("name", FIRST_STAGE)
def test_every_task_declares_its_outputs(name: str) -> None:
    """Guards against a task with no outputs, two of one name, one that shadows `result`, an
    unknown datatype, or a shape whose first axis is not the rows."""
    cls = TASKS[name]
    assert cls.outputs, f"{name} declares no outputs"
    names = [o.name for o in cls.outputs]
    assert len(set(names)) == len(names) and "result" not in names
    for o in cls.outputs:
        assert o.datatype in DATATYPES
        assert o.shape[0] == -1 and all(d > 0 for d in o.shape[1:])
        assert o.field


@pytest.mark.parametrize("name", FIRST_STAGE)
def test_metadata_serves_the_declared_outputs(name: str) -> None:
    """Guards against metadata that does not come from the task, or that changed for the
    tasks clients already know."""
    cls = TASKS[name]
    declared = [(o.name, o.datatype, list(o.shape)) for o in cls.outputs]
    assert metadata_outputs(cls) == [*declared, RESULT]
    assert metadata_outputs(cls) == PUBLISHED[name]


def _blazeface() -> tuple[dict[str, Any], list[np.ndarray]]:
    scores = np.full((896, 1), -30.0, np.float32)
    scores[100] = 5.0
    boxes = np.zeros((896, 16), np.float32)
    boxes[100, 2:4] = 20.0
    return {"input": [128, 128]}, [scores[:512], scores[512:], boxes[:512], boxes[512:]]


def _db_text() -> tuple[dict[str, Any], list[np.ndarray]]:
    prob = np.zeros((1, 64, 128), np.float32)
    prob[0, 20:30, 10:110] = 0.9
    return {"input": [128, 64], "layout": "nchw"}, [prob]


def _yolo() -> tuple[dict[str, Any], list[np.ndarray]]:
    columns = [[32, 32, 16, 8, 0.9, 0.1], [10, 10, 4, 4, 0.0, 0.8]]
    return {"input": [64, 64], "labels": ["a", "b"]}, [np.array(columns, np.float32).T]


def _classification() -> tuple[dict[str, Any], list[np.ndarray]]:
    return {"input": [8, 8]}, [np.array([1.0, 3.0, 2.0], np.float32)]


#: per task, model.toml's keys and network outputs (batch axis removed) that give a row or
#: more at threshold 0.5
NETWORKS = {
    "blazeface": _blazeface,
    "db_text": _db_text,
    "yolo": _yolo,
    "classification": _classification,
}


@pytest.mark.parametrize("threshold", [0.5, 1.0], ids=["rows", "none"])
@pytest.mark.parametrize("name", FIRST_STAGE)
def test_a_payload_fills_the_declared_outputs(name: str, threshold: float) -> None:
    """Guards against a declared field the task's payload does not carry, or tensors whose
    names, datatypes or shapes differ from the metadata (the open axis is the row count)."""
    raw, outputs = NETWORKS[name]()
    task = TASKS[name](ModelSpec.from_dict("m", {"task": name, **raw}))
    image = Image(np.zeros((64, 128, 3), np.uint8), 128, 64)
    _, ctx = task.preprocess(image)
    payload = task.postprocess(outputs, ctx, image, threshold)
    rows = len(payload[task.rows])
    assert (rows > 0) == (threshold < 1.0)
    result = Result(1, "m@1", image.width, image.height, Timing(0.0, 0.0, 0.0), payload)
    tensors = pipeline_tensors(task, result)
    got = [(t.name, t.datatype, list(t.shape)) for t in tensors]
    want = [(n, d, [rows if s < 0 else s for s in shape]) for n, d, shape in PUBLISHED[name]]
    assert got == want
