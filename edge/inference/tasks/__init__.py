"""Task plugins by name: what `task = "..."` in model.toml may say.

Each plugin turns frames into input tensors and network outputs into result payloads
(see `edge.inference.tasks.base.Task`); the engine looks the class up here and builds it from the
model's spec.
"""

from __future__ import annotations

from edge.inference.tasks.base import Task
from edge.inference.tasks.blazeface import BlazeFace
from edge.inference.tasks.classify import Classification
from edge.inference.tasks.textdet import DBText
from edge.inference.tasks.textline import CTCText, TextAngle
from edge.inference.tasks.yolo import Yolo

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (BlazeFace, DBText, Classification, Yolo, TextAngle, CTCText)
}


def get_task(name: str) -> type[Task]:
    """The plugin class registered as `name`; a ValueError listing the known names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None


__all__ = ["TASKS", "Task", "get_task"]
