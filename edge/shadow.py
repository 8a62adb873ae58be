"""How far a shadow version agrees with the serving one, on the same frame (0 to 1)."""

from __future__ import annotations

from typing import Any


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agree(primary: dict[str, Any], candidate: dict[str, Any], iou: float = 0.5) -> float:
    """Detections: F1 of greedy same-label matches at IoU >= `iou` (1.0 when both are empty).
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
                v = _iou(d["box"], c["box"])
                if v >= best_iou:
                    best, best_iou = c, v
        if best is not None:
            unmatched.remove(best)
            matches += 1
    return 2 * matches / (len(a) + len(b))
