"""Connected regions of a binary mask and their minimum-area rectangles, in plain numpy.

A mask is read as horizontal runs of set pixels; runs in neighbouring rows that touch
(8-connectivity: diagonal contact counts) belong to one region. Runs are joined with a
vectorised union-find, so the cost grows with the number of runs, not of pixels, and no
Python loop walks the image. Used by the DB text detector to turn a probability map into
boxes; nothing here knows about text.

Coordinates are continuous: pixel (x, y) covers [x, x + 1) x [y, y + 1), so a region's outline
passes along pixel edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Regions:
    """The runs of a mask and, per run, the region it belongs to (0..count-1)."""

    row: np.ndarray
    start: np.ndarray  # first column of the run
    end: np.ndarray  # one past the last column
    label: np.ndarray
    count: int

    def sums(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per region: the sum of `values` (same shape as the mask) over its pixels, and its
        pixel count."""
        w = values.shape[1]
        flat = values.ravel()
        # reduceat sums from each index to the next: run starts and ends interleaved give the
        # runs and the gaps between them. Every index must be in range, so a last run that
        # ends with the array goes without its end (its sum then runs to the end anyway).
        bounds = np.stack([self.row * w + self.start, self.row * w + self.end], axis=1).ravel()
        if bounds[-1] == flat.size:
            bounds = bounds[:-1]
        run_sums = np.add.reduceat(flat, bounds, dtype=np.float64)[::2]
        total = np.bincount(self.label, weights=run_sums, minlength=self.count)
        pixels = np.bincount(self.label, weights=self.end - self.start, minlength=self.count)
        return total, pixels

    def hulls(self, labels: np.ndarray) -> Polygons:
        """The convex hull of each region in `labels`, in that order, all found at once.

        Only the two ends of a region's rows can be hull corners, and of those only the ones
        that reach at least as far out as every row above or every row below (a region's rows
        are contiguous). Per region they form a chain from the right end of its top row down its
        right side and back up its left side to the left end of its top row: a polygon whose
        corners are the region's, monotone in y. Removing every corner where that polygon does
        not turn clockwise (on screen) leaves its hull unchanged, since such a corner is no
        hull vertex; repeating until none is left leaves the hull. The chain's two ends, the
        top row's corners, are hull vertices and stay. Each pass is one set of numpy calls over
        every region's chain (a handful of passes for text lines), so no Python loop runs per
        point or per region."""
        k = labels.size
        slot = np.full(self.count, -1)
        slot[labels] = np.arange(k)
        owner = slot[self.label]
        picked = np.flatnonzero(owner >= 0)
        owner, row = owner[picked], self.row[picked]
        order = np.lexsort((row, owner))
        owner, row = owner[order], row[order]
        # One group per (region, row): runs of one region in one row collapse to their extent.
        new = np.empty(order.size, dtype=bool)
        new[:1] = True
        new[1:] = (owner[1:] != owner[:-1]) | (row[1:] != row[:-1])
        heads = np.flatnonzero(new)
        left = np.minimum.reduceat(self.start[picked][order], heads).astype(np.float64)
        right = np.maximum.reduceat(self.end[picked][order], heads).astype(np.float64)
        top, g = row[heads], owner[heads]
        on_left, on_right = _may_be_corners(g, left, right)
        # Each kept row end gives two corners, (x, top) and (x, top + 1); the sort key lays
        # them out region by region, down the right side, then up the left side.
        span = 4 * (int(top.max()) + 1)
        key = np.concatenate(
            [
                ((g * span + 2 * top)[on_right, None] + (0, 1)).ravel(),
                ((g * span + span - 2 - 2 * top)[on_left, None] + (0, 1)).ravel(),
            ]
        )
        row_y = top.astype(np.float64)
        x = np.concatenate([np.repeat(right[on_right], 2), np.repeat(left[on_left], 2)])
        y = np.concatenate(
            [
                (row_y[on_right, None] + (0.0, 1.0)).ravel(),
                (row_y[on_left, None] + (1.0, 0.0)).ravel(),
            ]
        )
        owner = np.concatenate([np.repeat(g[on_right], 2), np.repeat(g[on_left], 2)])
        order = np.argsort(key, kind="stable")
        points, owner = np.stack([x[order], y[order]], axis=1), owner[order]
        ends = np.empty(owner.size, dtype=bool)  # each chain's first and last corner
        ends[0] = ends[-1] = True
        ends[1:-1] = (owner[1:-1] != owner[:-2]) | (owner[1:-1] != owner[2:])
        repeat = np.zeros(owner.size, dtype=bool)  # a corner equal to the next one
        repeat[:-1] = np.all(points[:-1] == points[1:], axis=1) & ~ends[:-1]
        points, owner, ends = points[~repeat], owner[~repeat], ends[~repeat]
        while True:
            before = points[1:-1] - points[:-2]
            after = points[2:] - points[1:-1]
            keep = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] > 0
            keep |= ends[1:-1]
            if keep.all():
                break
            keep = np.concatenate(([True], keep, [True]))
            points, owner, ends = points[keep], owner[keep], ends[keep]
        return Polygons(points, owner, k)


@dataclass(frozen=True, slots=True)
class Polygons:
    """Convex polygons as one array: vertices `(n, 2)` grouped by polygon, each polygon's
    clockwise on screen (y down) with no three in line; `owner[i]` is the polygon (0..count-1,
    ascending) vertex i belongs to."""

    points: np.ndarray
    owner: np.ndarray
    count: int

    def __getitem__(self, j: int) -> np.ndarray:
        return self.points[self.owner == j]


def _may_be_corners(g: np.ndarray, left: np.ndarray, right: np.ndarray) -> list[np.ndarray]:
    """For rows grouped by region `g` (rows in order within each), whether each row's left and
    right end can be a corner of the region's hull: it reaches at least as far out as every
    row above it or every row below it, and it is not in the middle of a straight side."""
    inner = np.zeros(g.size, dtype=bool)
    inner[1:-1] = (g[:-2] == g[1:-1]) & (g[1:-1] == g[2:])
    flags = []
    for side, sign in ((left, 1.0), (right, -1.0)):
        out = sign * side  # smaller is further out
        shift = g * (2.0 * float(np.abs(out).max()) + 2.0)  # segments: one region each
        from_top = np.minimum.accumulate(out - shift) + shift
        from_bottom = np.minimum.accumulate((out + shift)[::-1])[::-1] - shift
        straight = inner.copy()
        straight[1:-1] &= (side[:-2] == side[1:-1]) & (side[1:-1] == side[2:])
        flags.append(((out <= from_top) | (out <= from_bottom)) & ~straight)
    return flags


def label_regions(mask: np.ndarray, grow: bool = False) -> Regions:
    """Find the 8-connected regions of a 2-D boolean mask; with `grow`, of the mask grown by
    one pixel right and down first (a pixel counts as set when it, the one above it, the one
    to its left or the one above that is set)."""
    h, w = mask.shape
    stride = w + 2
    # Rows laid end to end with a clear pixel on each side: no run crosses into the next row,
    # and one pass over the flat array finds every run's start (0 -> 1) and end (1 -> 0).
    padded = np.zeros((h, stride), dtype=bool)
    inner = padded[:, 1:-1]
    if grow:
        inner[0] = mask[0]
        np.logical_or(mask[1:], mask[:-1], out=inner[1:])  # down
        flat = padded.reshape(-1)
        grown = flat.copy()
        grown[1:] |= flat[:-1]  # right: a row's last pixel grows into its right margin...
        grown.reshape(h, stride)[:, -1] = False  # ...which stays clear
        flat = grown
    else:
        inner[...] = mask
        flat = padded.reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # flat index of the pixel before a change
    rising = flat[edges + 1]
    starts, ends = edges[rising], edges[~rising]
    row = starts // stride
    start = starts - row * stride
    end = ends - row * stride
    n = row.size
    if n == 0:
        empty = np.zeros(0, dtype=np.intp)
        return Regions(empty, empty, empty, empty, 0)
    # Runs sorted by (row, start); those touching run i in the next row form a contiguous
    # range: they start at or before i's end and end at or after i's start (8-connectivity).
    start_key = row * stride + start
    end_key = row * stride + end
    lo = np.searchsorted(end_key, (row + 1) * stride + start, side="left")
    hi = np.searchsorted(start_key, (row + 1) * stride + end, side="right")
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), counts)
    firsts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    b = firsts + np.arange(a.size)
    label = _union(n, a, b)
    return Regions(row, start, end, label, int(label.max()) + 1)


def _union(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph on `n` nodes with edges (a[i], b[i]): labels 0..k-1."""
    parent = np.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        if np.array_equal(pa, pb):
            break
        low = np.minimum(pa, pb)
        # Hook roots onto the smaller root (parent[x] <= x always holds), then flatten.
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    _, label = np.unique(parent, return_inverse=True)
    return label.reshape(-1)


# Vertex-by-vertex projections computed at once, at most (about 6.4 MB of float64 for the
# projections and the padded polygons together); past it, polygons go in groups of like size.
PROJECTION_BUDGET = 200_000


def min_area_rects(
    polygons: Polygons, budget: int = PROJECTION_BUDGET
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each convex polygon, the smallest-area rectangle around it: corners `(count, 4, 2)`
    in order around it, and side lengths `(count,)` along its first edge and across it.

    One side of the smallest rectangle lies along an edge of the polygon, so every edge is
    tried: every vertex of the polygon is projected on the edge's direction and its normal,
    all polygons at once, each padded to the longest with copies of its first vertex (which
    changes no extent). That costs (vertices x longest polygon) projections: when it would
    pass `budget`, polygons go in groups by size (up to 2^k vertices), so one large region
    among many small ones does not pad them all to its size, and each group in chunks of at
    most `budget` projections (a chunk holds one polygon at least)."""
    points, owner, k = polygons.points, polygons.owner, polygons.count
    if k == 0:
        return np.empty((0, 4, 2)), np.empty(0), np.empty(0)
    counts = np.bincount(owner, minlength=k)
    if owner.size * int(counts.max()) <= budget:
        return _smallest_rects(points, owner, counts)
    corners, along, across = np.empty((k, 4, 2)), np.empty(k), np.empty(k)
    size_class = np.ceil(np.log2(counts)).astype(np.intp)
    for c in np.unique(size_class).tolist():
        group = np.flatnonzero(size_class == c)
        per_chunk = max(1, budget // 4**c)  # a polygon here costs at most (2^c)^2
        for chunk in np.array_split(group, -(-group.size // per_chunk)):
            mine = np.isin(owner, chunk)  # vertices are grouped by polygon: order is kept
            local = np.searchsorted(chunk, owner[mine])
            corners[chunk], along[chunk], across[chunk] = _smallest_rects(
                points[mine], local, counts[chunk]
            )
    return corners, along, across


def _smallest_rects(
    points: np.ndarray, owner: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`min_area_rects` for polygons 0..len(counts)-1 in one pass."""
    n, k = owner.size, counts.size
    first = np.cumsum(counts) - counts
    following = np.arange(1, n + 1)
    following[first + counts - 1] = first
    padded = np.empty((k, int(counts.max()), 2))
    padded[:] = points[first, None, :]
    padded[owner, np.arange(n) - first[owner]] = points
    edge = points[following] - points
    edge /= np.hypot(edge[:, 0], edge[:, 1])[:, None]
    axes = np.stack([edge, np.stack([-edge[:, 1], edge[:, 0]], axis=1)], axis=1)  # (n, 2, 2)
    reach = axes @ padded[owner].transpose(0, 2, 1)  # (n, 2, m): along, across
    low, high = reach.min(axis=2), reach.max(axis=2)
    size = high - low
    best = np.lexsort((size[:, 0] * size[:, 1], owner))[first]
    u, v = axes[best, 0], axes[best, 1]
    low, high = low[best], high[best]
    corners = np.stack(
        [
            u * low[:, :1] + v * low[:, 1:],
            u * high[:, :1] + v * low[:, 1:],
            u * high[:, :1] + v * high[:, 1:],
            u * low[:, :1] + v * high[:, 1:],
        ],
        axis=1,
    )
    return corners, size[best, 0], size[best, 1]


def expand_rect(corners: np.ndarray, distance: np.ndarray | float) -> np.ndarray:
    """Grow rectangles by `distance` on every side; corners `(4, 2)`, or `(n, 4, 2)` with a
    distance each, in order around each, as `min_area_rects` returns them (corner 1 along the
    first side, corner 3 across it)."""
    u = corners[..., 1, :] - corners[..., 0, :]
    v = corners[..., 3, :] - corners[..., 0, :]
    u = u / np.maximum(np.hypot(u[..., :1], u[..., 1:]), 1e-12)
    v = v / np.maximum(np.hypot(v[..., :1], v[..., 1:]), 1e-12)
    # Each corner moves outwards along both sides that meet at it.
    signs = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    step = signs[:, :1] * u[..., None, :] + signs[:, 1:] * v[..., None, :]
    return corners + np.asarray(distance)[..., None, None] * step


def clockwise_from_top_left(corners: np.ndarray) -> np.ndarray:
    """The same 4 corners, starting nearest the top-left, clockwise on screen (y down);
    `(4, 2)`, or `(n, 4, 2)` for n quadrilaterals at once."""
    centre = corners.mean(axis=-2, keepdims=True)
    angle = np.arctan2(corners[..., 1] - centre[..., 1], corners[..., 0] - centre[..., 0])
    order = np.argsort(angle, axis=-1, kind="stable")
    ordered = np.take_along_axis(corners, order[..., None], axis=-2)
    first = np.argmin(ordered[..., 0] + ordered[..., 1], axis=-1)
    turn = (np.arange(4) + np.expand_dims(first, -1)) % 4
    return np.take_along_axis(ordered, turn[..., None], axis=-2)
