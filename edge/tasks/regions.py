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
        flat = np.append(values.ravel(), 0)  # reduceat needs every index in range
        bounds = np.stack([self.row * w + self.start, self.row * w + self.end], axis=1)
        run_sums = np.add.reduceat(flat, bounds.ravel(), dtype=np.float64)[::2]
        total = np.bincount(self.label, weights=run_sums, minlength=self.count)
        pixels = np.bincount(self.label, weights=self.end - self.start, minlength=self.count)
        return total, pixels

    def outlines(self) -> list[np.ndarray]:
        """Per region, the pixel corners `(k, 2)` of its leftmost and rightmost pixel in each
        row (except along straight sides): the region's convex hull is the hull of these."""
        order = np.lexsort((self.row, self.label))
        label, row = self.label[order], self.row[order]
        # One group per (region, row): runs of one region in one row collapse to their extent.
        new = np.empty(order.size, dtype=bool)
        new[:1] = True
        new[1:] = (label[1:] != label[:-1]) | (row[1:] != row[:-1])
        heads = np.flatnonzero(new)
        left = np.minimum.reduceat(self.start[order], heads).astype(np.float64)
        right = np.maximum.reduceat(self.end[order], heads).astype(np.float64)
        top = row[heads].astype(np.float64)
        points = np.stack(
            [
                np.stack([left, top], axis=1),
                np.stack([left, top + 1], axis=1),
                np.stack([right, top], axis=1),
                np.stack([right, top + 1], axis=1),
            ],
            axis=1,
        ).reshape(-1, 2)  # 4 per group
        # Leave out the points that cannot be hull vertices, so the hull's Python loop stays
        # short. A region's rows are contiguous, so a row's left end lies inside the hull when
        # rows both above and below reach further left (and likewise on the right), and where
        # a side runs straight down, the rows between its first and last add only points on
        # that edge.
        g = label[heads]
        inner = np.zeros(g.size, dtype=bool)
        inner[1:-1] = (g[:-2] == g[1:-1]) & (g[1:-1] == g[2:])
        keep = np.empty((g.size, 4), dtype=bool)
        for col, side, sign in ((0, left, 1.0), (2, right, -1.0)):
            out = sign * side  # smaller is further out
            shift = g * (2.0 * float(np.abs(out).max()) + 2.0)  # segments: one region each
            from_top = np.minimum.accumulate(out - shift) + shift
            from_bottom = np.minimum.accumulate((out + shift)[::-1])[::-1] - shift
            straight = inner.copy()
            straight[1:-1] &= (side[:-2] == side[1:-1]) & (side[1:-1] == side[2:])
            keep[:, col] = keep[:, col + 1] = ((out <= from_top) | (out <= from_bottom)) & ~straight
        kept = keep.reshape(-1)
        counts = np.bincount(np.repeat(g, 4)[kept], minlength=self.count)
        return np.split(points[kept], np.cumsum(counts)[:-1])


def label_regions(mask: np.ndarray) -> Regions:
    """Find the 8-connected regions of a 2-D boolean mask."""
    h, w = mask.shape
    stride = w + 2
    # Rows laid end to end with a clear pixel on each side: no run crosses into the next row,
    # and one pass over the flat array finds every run's start (0 -> 1) and end (1 -> 0).
    padded = np.zeros((h, stride), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded.reshape(-1))
    edges = np.flatnonzero(step != 0)  # on booleans: ten times faster than on int8
    rising = step[edges] > 0
    starts, ends = edges[rising], edges[~rising]  # flat index of the pixel before the change
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


# Eight directions in order of angle: the points furthest along each bound an octagon inside the
# hull, and no point strictly inside it can be a hull vertex.
_OCTAGON = np.array(
    [[-1, 0], [-1, -1], [0, -1], [1, -1], [1, 0], [1, 1], [0, 1], [-1, 1]], dtype=np.float64
)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull `(m, 2)` of `(k, 2)` points, counter-clockwise (Andrew's monotone chain).

    The points strictly inside the octagon of extremes are set aside first, in one vectorised
    test (Akl and Toussaint's heuristic): for a region's outline that leaves a few dozen of
    hundreds, so the Python loop below, which holds the GIL, stays short."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) > 16:
        reach = _OCTAGON @ pts.T  # (8, k)
        ring = pts[np.argmax(reach, axis=1)]  # (8, 2) in angular order
        side = np.roll(ring, -1, axis=0) - ring
        keep_edge = np.any(side != 0, axis=1)
        ring, side = ring[keep_edge], side[keep_edge]
        if len(ring) >= 3:
            dx, dy = pts[:, 0] - ring[:, :1], pts[:, 1] - ring[:, 1:]  # (corners, k)
            cross = side[:, :1] * dy - side[:, 1:] * dx
            pts = pts[~np.all(cross > 0, axis=0)]
    order = np.lexsort((pts[:, 1], pts[:, 0]))  # by x, then y
    pts = pts[order]
    if len(pts) > 1:
        pts = pts[np.concatenate(([True], np.any(pts[1:] != pts[:-1], axis=1)))]
    if len(pts) <= 2:
        return pts
    xy = pts.tolist()

    def half(seq: list[list[float]]) -> list[list[float]]:
        chain: list[list[float]] = []
        for p in seq:
            while len(chain) >= 2:
                (ox, oy), (ax, ay) = chain[-2], chain[-1]
                if (ax - ox) * (p[1] - oy) - (ay - oy) * (p[0] - ox) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(xy), half(xy[::-1])
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def min_area_rect(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The smallest-area rectangle around `(k, 2)` points: its corners `(4, 2)` in order
    around it, and its side lengths (along the first edge, across it)."""
    hull = convex_hull(points)
    if len(hull) < 3:
        lo, hi = points.min(axis=0), points.max(axis=0)
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
        return corners, float(hi[0] - lo[0]), float(hi[1] - lo[1])
    # One side of the minimum rectangle lies along an edge of the hull: try every edge.
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    keep = lengths > 0
    along = edges[keep] / lengths[keep, None]  # (e, 2) unit directions
    across = np.stack([-along[:, 1], along[:, 0]], axis=1)
    pa = along @ hull.T  # (e, m) projections
    pc = across @ hull.T
    a0, a1 = pa.min(axis=1), pa.max(axis=1)
    c0, c1 = pc.min(axis=1), pc.max(axis=1)
    best = int(np.argmin((a1 - a0) * (c1 - c0)))
    u, v = along[best], across[best]
    corners = np.array(
        [
            u * a0[best] + v * c0[best],
            u * a1[best] + v * c0[best],
            u * a1[best] + v * c1[best],
            u * a0[best] + v * c1[best],
        ]
    )
    return corners, float(a1[best] - a0[best]), float(c1[best] - c0[best])


def expand_rect(corners: np.ndarray, distance: float) -> np.ndarray:
    """Grow a rectangle by `distance` on every side; corners `(4, 2)` in order around it,
    as `min_area_rect` returns them (corner 1 along the first side, corner 3 across it)."""
    u = corners[1] - corners[0]
    v = corners[3] - corners[0]
    u = u / max(float(np.hypot(*u)), 1e-12)
    v = v / max(float(np.hypot(*v)), 1e-12)
    # Each corner moves outwards along both sides that meet at it.
    signs = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return corners + distance * (signs[:, :1] * u + signs[:, 1:] * v)


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
