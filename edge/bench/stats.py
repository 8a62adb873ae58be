"""Summaries of a run: percentiles of the ages, fairness over streams, drift of a figure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The `p` quantile (0..1) of `values` by the nearest rank; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def jain(shares: Sequence[float]) -> float:
    """Jain's fairness index of what each stream got: 1.0 when all got the same, 1/n when
    one got everything; NaN when nobody got anything."""
    total = sum(shares)
    squares = sum(x * x for x in shares)
    return total * total / (len(shares) * squares) if squares else math.nan


def drift(values: Sequence[float]) -> float:
    """How far apart repeated measurements of one figure are: (max - min) / max."""
    top = max(values)
    return (top - min(values)) / top if top else 0.0


def binned_median(points: Sequence[tuple[float, float]], width: float) -> list[tuple[float, float]]:
    """(t, value) points as the median value of each `width`-second bin, at the bin's middle."""
    bins: dict[int, list[float]] = {}
    for t, v in points:
        bins.setdefault(int(t // width), []).append(v)
    return [((k + 0.5) * width, statistics.median(vs)) for k, vs in sorted(bins.items())]
