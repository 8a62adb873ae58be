"""A model's later stages (model.toml `[[stages]]`): run on crops of what the first found.

The first stage's postprocess gives regions (its payload's `rows`); `run_stages` runs every
later stage on them inside the same worker job, before the frames are answered, so a frame
is still answered once and the scheduler's rules (latest frame wins, every frame answered)
hold as for a one-stage model. It takes every frame of the worker's batch at once: the
frames of different streams that the first stage ran together (up to its batch limit,
edge/inference/batching.py) have their crops batched together too. The best-scored
`max_regions` regions of each frame are kept (the rest are left out of the answer); each is
cropped once (`RegionTask.takes`), and each stage runs all the crops in batches of up to its
`max_batch`, narrowest first so a batch pads little, padded on the right to the task's
`batch_width` (the batch's widest sample, which is never wider than the task's input: the
padded width's cap). What a stage gives (`RegionTask.gives`) is merged into the region its
crop came from; what it turns (`RegionTask.turn`) is what the next one takes.
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


#: told each stage run's size: the stage, the crops it carried, the frames they came from
#: (the pipeline observes both in /metrics)
OnBatch = Callable[[Stage, int, int], None]


@dataclass(slots=True)
class _Crops:
    """The crops of every frame of a batch, flattened: each with its region and its frame."""

    images: list[Image]
    regions: list[dict[str, Any]]
    frames: list[int]  # the index of the frame each crop came from


def run_stages(
    stages: list[Stage], spec: ModelSpec, rows: str,
    frames: list[tuple[Image, dict[str, Any]]], worker: int, on_batch: OnBatch | None = None,
) -> list[dict[str, Any] | Exception]:  # fmt: skip
    """Each frame's payload with its regions (`payload[rows]`) bounded and given each stage's
    fields, the crops of all `frames` batched together; for a frame the stages failed on, the
    exception. When a joint batch fails, each frame is run again alone, so a frame that
    breaks a stage costs only itself. `on_batch` is told the size of every batch a stage
    runs."""
    bounded = [_bounded(payload, rows, spec) for _, payload in frames]
    try:
        _run_all(stages, [im for im, _ in frames], bounded, worker, on_batch)
    except Exception:
        if len(frames) == 1:
            raise
        return [_alone(stages, spec, rows, frame, worker, on_batch) for frame in frames]
    payloads = [payload for _, payload in frames]
    return [{**p, rows: regions} for p, regions in zip(payloads, bounded, strict=True)]


def _alone(
    stages: list[Stage], spec: ModelSpec, rows: str, frame: tuple[Image, dict[str, Any]],
    worker: int, on_batch: OnBatch | None,
) -> dict[str, Any] | Exception:  # fmt: skip
    try:
        return run_stages(stages, spec, rows, [frame], worker, on_batch)[0]
    except Exception as e:
        return e


def _bounded(payload: dict[str, Any], rows: str, spec: ModelSpec) -> list[dict[str, Any]]:
    """The best-scored `max_regions` regions of a payload, copied (merging into them leaves
    the first stage's payload as it was)."""
    regions = sorted(payload.get(rows, []), key=lambda r: -float(r.get("score", 0.0)))
    return [dict(r) for r in regions[: spec.max_regions]]


def _run_all(
    stages: list[Stage], images: list[Image], regions: list[list[dict[str, Any]]], worker: int,
    on_batch: OnBatch | None,
) -> None:  # fmt: skip
    if not stages:
        return
    takes = stages[0].task.takes
    crops = _Crops([], [], [])
    for i, (image, mine) in enumerate(zip(images, regions, strict=True)):
        crops.images += [crop_upright(image, _corners(r, takes)) for r in mine]
        crops.regions += mine
        crops.frames += [i] * len(mine)
    if crops.images:
        for stage in stages:
            crops.images = _run_stage(stage, crops, worker, on_batch)


def _run_stage(stage: Stage, crops: _Crops, worker: int,
               on_batch: OnBatch | None) -> list[Image]:  # fmt: skip
    """One stage over every crop, in batches of up to its `max_batch`, narrowest first; what
    it gives merged into each crop's region; the crops the next stage takes."""
    task = stage.task
    threshold = task.spec.threshold
    samples = [task.preprocess(c)[0] for c in crops.images]
    order = np.argsort([s.shape[-1] for s in samples], kind="stable").tolist()
    size = task.spec.max_batch
    turned = list(crops.images)
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        picked = [samples[i] for i in chunk]
        batch = _pad(picked, task.batch_width([s.shape[-1] for s in picked]))
        outputs = stage.run(batch, worker)
        if on_batch is not None:
            on_batch(stage, len(chunk), len({crops.frames[i] for i in chunk}))
        for row, i in enumerate(chunk):
            image = crops.images[i]
            fields = task.postprocess([o[row] for o in outputs], None, image, threshold)
            crops.regions[i].update({k: fields[k] for k in task.gives})
            turned[i] = task.turn(image, fields)
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
