"""A model's later stages (model.toml `[[stages]]`) outside the gateway, for the bench's
plain loops: the ceiling and the naive server run every stage of a frame (for `ocr`: the
detector, the orientation classifier and the recogniser), one frame at a time, with the
stage runner the gateway uses (edge/inference/stages.py), so a ratio to the ceiling compares
the same work."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.stages import Stage, make_stage, run_stages
from edge.inference.tasks import get_task
from edge.inference.tasks.crops import RegionTask


def later_stages(
    version: Path, spec: ModelSpec, providers: list[str], options: ort.SessionOptions
) -> list[Stage]:
    """The stages after the first of the model in the folder `version`, one session each."""
    stages = []
    for stage in spec.stages:
        task = get_task(stage.spec.task)(stage.spec)
        if not isinstance(task, RegionTask):
            raise ValueError(f"{stage.file}: task {stage.spec.task!r} does not take crops")
        session = functools.partial(_session, str(version / stage.file), options, providers)
        stages.append(make_stage(stage.file, task, session, 1))
    return stages


def _session(path: str, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    return ort.InferenceSession(path, options, providers=providers)


def read_regions(
    stages: list[Stage], spec: ModelSpec, rows: str, image: Image, payload: dict[str, Any]
) -> dict[str, Any]:
    """`payload` with what the later stages give merged into its regions (as it is when
    `stages` is empty)."""
    if not stages:
        return payload
    out = run_stages(stages, spec, rows, [(image, payload)], 0)[0]
    if isinstance(out, Exception):
        raise out
    return out


def described(spec: ModelSpec) -> list[str]:
    """Each stage in words, the first first: its task and its network's file."""
    return [f"{spec.task} (model.onnx)"] + [f"{s.spec.task} ({s.file})" for s in spec.stages]
