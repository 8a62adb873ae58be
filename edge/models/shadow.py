"""Shadow versions: a candidate runs on a sample of batches beside the serving version; its
latency and how far it agrees (0 to 1) go to the metrics; its results never reach a client."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from edge.frames import Image
    from edge.inference.engine import LoadedModel
    from edge.metrics import Metrics

log = logging.getLogger("edge.shadow")


class Sample(Protocol):
    """One frame of a served batch as a second opinion reads it (edge.core.pipeline's
    `InFlight`): the decoded image (None for a raw input) and what preprocess noted."""

    @property
    def image(self) -> Image | None: ...

    @property
    def context(self) -> Any: ...


def run_shadow(
    metrics: Metrics,
    worker: int,
    model: LoadedModel,
    shadow: LoadedModel,
    batch: np.ndarray,
    ready: Sequence[Sample],
    payloads: list[dict[str, Any] | None],
    thresholds: list[float],
) -> None:
    """Run `batch` on `shadow` (on the worker thread that just served it) and record how far
    each frame's outcome agrees with the serving version's `payloads`."""
    try:
        seconds, _, agreements = second_opinion(shadow, worker, batch, ready, payloads, thresholds)
    except Exception as e:
        log.warning("shadow %s failed: %s", shadow.ref, e)
        return
    metrics.shadow_latency.labels(model.name, shadow.version).observe(seconds)
    agreement = metrics.shadow_agreement.labels(model.name, shadow.version)
    for a in agreements:
        agreement.observe(a)


def second_opinion(
    other: LoadedModel,
    worker: int,
    batch: np.ndarray,
    ready: Sequence[Sample],
    payloads: list[dict[str, Any] | None],
    thresholds: list[float],
    count_blank: bool = True,
) -> tuple[float, float, list[float]]:
    """Run `batch` on `other` too: the seconds its session call took, what it cost
    (`LoadedModel.run_costed`), and the agreement of its outcome with `payloads` for each
    frame that has one (and that `other` can postprocess); without `count_blank`, frames on
    which both find nothing are left out (they say nothing of a version that never finds
    anything). Raises what the run raises."""
    outputs, seconds, cost = other.run_costed(batch, worker)
    agreements = []
    for i, sample in enumerate(ready):
        primary, image = payloads[i], sample.image
        if primary is None or image is None:
            continue
        try:
            rows = [o[i] for o in outputs]
            candidate = other.task.postprocess(rows, sample.context, image, thresholds[i])
        except Exception:
            continue
        if count_blank or not (_blank(primary) and _blank(candidate)):
            agreements.append(agree(primary, candidate))
    return seconds, cost, agreements


def _blank(result: dict[str, Any]) -> bool:
    return not (result.get("detections") or result.get("classes"))


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agree(primary: dict[str, Any], candidate: dict[str, Any], iou: float = 0.5) -> float:
    """Detections: F1 of greedy same-label matches at IoU >= `iou` (1.0 when both are empty;
    either way round, up to ties in the greedy matching).
    Classes: 1.0 when the top class is the same, else 0.0."""
    if "classes" in primary or "classes" in candidate:
        a, b = primary.get("classes") or [], candidate.get("classes") or []
        if not a and not b:
            return 1.0
        return 1.0 if a and b and a[0]["label"] == b[0]["label"] else 0.0
    a, b = primary.get("detections") or [], candidate.get("detections") or []
    if not a and not b:
        return 1.0
    unmatched = list(b)
    matches = 0
    for d in a:
        best, best_iou = None, iou
        for c in unmatched:
            if c["label"] == d["label"]:
                v = box_iou(d["box"], c["box"])
                if v >= best_iou:
                    best, best_iou = c, v
        if best is not None:
            unmatched.remove(best)
            matches += 1
    return 2 * matches / (len(a) + len(b))
