"""A model's later stages (model.toml `[[stages]]`): run on crops of what the first found.

The first stage's postprocess gives regions (its payload's `rows`); `run_stages` runs every
later stage on them inside the same worker job, before the frame is answered, so a frame is
still answered once and the scheduler's rules (latest frame wins, every frame answered) hold
as for a one-stage model. The best-scored `max_regions` regions are kept (the rest are left
out of the answer); each is cropped once (`RegionTask.takes`), and each stage runs its crops
in batches of up to its `max_batch`, narrowest first so a batch pads little, padded on the
right to the task's `batch_width`. What a stage gives (`RegionTask.gives`) is merged into
the region its crop came from; what it turns (`RegionTask.turn`) is what the next one takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks.crops import RegionTask, crop_upright


@dataclass
class Stage:
    """A later stage, loaded: its task and one session per session of the first stage."""

    file: str
    task: RegionTask
    sessions: list[ort.InferenceSession]

    def __post_init__(self) -> None:
        self.input_name = self.sessions[0].get_inputs()[0].name

    def run(self, batch: np.ndarray, worker: int) -> list[np.ndarray]:
        session = self.sessions[worker % len(self.sessions)]
        return list(session.run(None, {self.input_name: batch}))

    def warm_up(self) -> None:
        """Each session once on a blank crop as wide as the input."""
        spec = self.task.spec
        blank = np.full((spec.input_height, spec.input_width, 3), 127, np.uint8)
        tensor, _ = self.task.preprocess(Image(blank, spec.input_width, spec.input_height))
        padded = _pad([tensor], self.task.batch_width([tensor.shape[-1]]))
        for i in range(len(self.sessions)):
            self.run(padded, i)


def make_stage(
    file: str, task: RegionTask, session: Callable[[], ort.InferenceSession], count: int
) -> Stage:
    """A stage of `count` sessions made by `session`; its task told the network's metadata."""
    sessions = [session() for _ in range(count)]
    task.attach(sessions[0].get_modelmeta().custom_metadata_map)
    return Stage(file, task, sessions)


#: told each stage run's batch size (the pipeline observes it in /metrics)
OnBatch = Callable[[Stage, int], None]


def run_stages(
    stages: list[Stage], spec: ModelSpec, rows: str, image: Image, payload: dict[str, Any],
    worker: int, on_batch: OnBatch | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`payload` with its regions (`payload[rows]`) bounded and given each stage's fields;
    `on_batch` is told the size of every batch a stage runs."""
    regions = sorted(payload.get(rows, []), key=lambda r: -float(r.get("score", 0.0)))
    regions = regions[: spec.max_regions]
    if regions and stages:
        crops = [crop_upright(image, _corners(r, stages[0].task.takes)) for r in regions]
        for stage in stages:
            crops = _run_stage(stage, crops, regions, worker, on_batch)
    return {**payload, rows: regions}


def _run_stage(stage: Stage, crops: list[Image], regions: list[dict[str, Any]], worker: int,
               on_batch: OnBatch | None) -> list[Image]:  # fmt: skip
    task = stage.task
    threshold = task.spec.threshold
    samples = [task.preprocess(c)[0] for c in crops]
    order = np.argsort([s.shape[-1] for s in samples], kind="stable").tolist()
    size = task.spec.max_batch
    turned = list(crops)
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        picked = [samples[i] for i in chunk]
        batch = _pad(picked, task.batch_width([s.shape[-1] for s in picked]))
        outputs = stage.run(batch, worker)
        if on_batch is not None:
            on_batch(stage, len(chunk))
        for row, i in enumerate(chunk):
            fields = task.postprocess([o[row] for o in outputs], None, crops[i], threshold)
            regions[i].update({k: fields[k] for k in task.gives})
            turned[i] = task.turn(crops[i], fields)
    return turned


def _pad(samples: list[np.ndarray], width: int) -> np.ndarray:
    """Samples (C, H, w) as one batch (N, C, H, width), zeros on the right."""
    c, h = samples[0].shape[:2]
    batch = np.zeros((len(samples), c, h, width), np.float32)
    for i, s in enumerate(samples):
        w = min(width, s.shape[-1])
        batch[i, :, :, :w] = s[:, :, :w]
    return batch


def _corners(region: dict[str, Any], field: str) -> list[list[float]]:
    """The region's four corners clockwise from the top left: its polygon, or its box's."""
    value = region[field]
    if field == "box":
        x1, y1, x2, y2 = value
        return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    return [list(p) for p in value]
