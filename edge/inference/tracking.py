"""Track IDs across one stream's frames: IOU matching against constant-velocity predictions,
ByteTrack's two score thresholds.

A `Tracker` belongs to one stream and sees its frames in order, each with its clock: the
frame's sequence number. A camera's frames are evenly spaced in capture time, which their
arrival at the gateway is not (a network stall delivers a burst of frames at once, and
motion measured over arrival times would read it as a jump); the frames the stream dropped
still count. Each update:

1. ends the tracks unseen for more than `lost_after_frames` frames that were also looked for
   and missed in a frame since they were last seen: frames the stream dropped are no
   evidence that an object left, so a gap of dropped frames longer than the absence (a
   machine slower than the camera) leaves its tracks one frame to be found in;
2. predicts where each live track is now: its last box moved by its velocity over the time
   since it was last seen, so frames the stream dropped under load (latest-frame-wins) are a
   longer step of the same motion, not a break;
3. matches detections scoring at or above the stream's threshold to the predictions, greedily
   by IOU (at least `iou`), then the detections between `low` and the threshold to the tracks
   still unmatched (ByteTrack's second pass: a face turning away or blurred by motion keeps
   its track through a weak frame). A weak detection moves its track but does not measure
   its velocity: a half-hidden face is found as a displaced box, and motion measured from it
   sends the predictions off the face (bench/tracking.py measured both, docs/benchmarks.md);
4. starts a track for each unmatched detection at or above the threshold; an unmatched weak
   detection is not reported.

Greedy matching rather than the Hungarian method: a camera frame holds a few objects and the
greedy order by IOU gives the same pairs wherever boxes do not overlap ambiguously, with no
scipy. Written here rather than taken from norfair or supervision: either brings a
dependency tree (scipy, supervision's opencv and matplotlib) tens of MB large on the ARM64
images for about a hundred lines of numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: how much of a new velocity measurement replaces the old estimate (exponential smoothing)
_SMOOTHING = 0.5
#: the colours a track is drawn in, picked by its ID (`track_colour`), wherever results are
#: drawn: the WebRTC return track, `edge stream --annotate`, the dashboard (edge/web/app.js
#: holds the same list)
TRACK_COLOURS = tuple("#e6194b #f58231 #ffe119 #bfef45 #42d4f4 #4363d8 #911eb4 #f032e6".split())


def track_colour(track_id: int) -> str:
    """A track's colour, the same on every frame: the ID modulo the palette, so neighbouring
    IDs (the tracks most often in view together) differ."""
    return TRACK_COLOURS[abs(track_id) % len(TRACK_COLOURS)]


class TrackingSpecError(ValueError):
    """A bad `[tracking]` table; the message says what to set."""


@dataclass(frozen=True)
class TrackingSpec:
    """model.toml's `[tracking]`: whether each detection carries a `track_id`, and how."""

    @classmethod
    def from_dict(cls, raw: object, where: str) -> TrackingSpec:
        if not isinstance(raw, dict):
            raise TrackingSpecError(f"{where}: [tracking] must be a table, e.g. enabled = true")
        unknown = set(raw) - {"enabled", "lost_after_frames", "iou", "low"}
        if unknown:
            raise TrackingSpecError(f"{where}: [tracking] has unknown keys {sorted(unknown)}")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise TrackingSpecError(f"{where}: [tracking] enabled must be true or false")
        lost = raw.get("lost_after_frames", cls.lost_after_frames)
        if isinstance(lost, bool) or not isinstance(lost, int) or lost < 1:
            raise TrackingSpecError(f"{where}: [tracking] lost_after_frames must be an int >= 1")
        fractions = {k: raw.get(k, getattr(cls, k)) for k in ("iou", "low")}
        for key, v in fractions.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise TrackingSpecError(f"{where}: [tracking] {key} must be between 0 and 1")
        return cls(enabled, lost, float(fractions["iou"]), float(fractions["low"]))

    # the fields: what model.toml may set
    enabled: bool = False
    #: a track unseen for more than this many of the stream's frames ends
    lost_after_frames: int = 30
    #: the least IOU between a track's predicted box and a detection to continue it
    iou: float = 0.3
    #: detections scoring from here up to the threshold only continue tracks (ByteTrack)
    low: float = 0.1


@dataclass(slots=True)
class Track:
    id: int
    box: np.ndarray  # x1, y1, x2, y2 where it was last seen
    seen: float  # when (the frame's sequence number)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # pixels per frame
    hits: int = 1  # frames it was seen in
    missed: int = 0  # frames it was looked for in and not found, since it was last seen

    def predicted(self, t: float) -> np.ndarray:
        return self.box + self.velocity * max(0.0, t - self.seen)

    def follow(self, box: np.ndarray, t: float, steer: bool = True) -> None:
        """Seen at `box` at time `t`; its velocity measured again unless `steer` is false."""
        dt = t - self.seen
        if dt > 0 and steer:
            measured = (box - self.box) / dt
            weight = 1.0 if self.hits == 1 else _SMOOTHING  # a first step is all we know
            self.velocity = self.velocity + weight * (measured - self.velocity)
        self.box, self.seen, self.hits, self.missed = box, t, self.hits + 1, 0


@dataclass(frozen=True, slots=True)
class Update:
    """One frame's outcome: each detection's track ID (None: a weak detection that continued
    no track, not to be reported) and how many tracks started and ended."""

    ids: list[int | None]
    started: int
    ended: int


class Tracker:
    """One stream's tracks. Not thread-safe: its stream has at most one frame in flight, so
    one worker at a time updates it (edge/core/tracks.py)."""

    def __init__(self, spec: TrackingSpec, model: str = "", weak_steer: bool = False) -> None:
        self.spec, self.model = spec, model
        #: whether a weak detection that continues a track measures its velocity too (as
        #: ByteTrack's Kalman update does); off: it moves the track, its motion stays
        #: what strong detections measured (bench/tracking.py compares the two)
        self.weak_steer = weak_steer
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray, scores: np.ndarray, threshold: float, t: float) -> Update:
        """Match this frame's detections (`boxes` (N, 4), `scores` (N,)) at time `t`."""
        lost = self.spec.lost_after_frames
        alive = [k for k in self.tracks if t - k.seen <= lost or not k.missed]
        ids: list[int | None] = [None] * len(boxes)
        strong = [i for i in range(len(boxes)) if scores[i] >= threshold]
        weak = [i for i in range(len(boxes)) if self.spec.low <= scores[i] < threshold]
        free = {k.id: k for k in alive}
        for wanted, steer in ((strong, True), (weak, self.weak_steer)):
            for i, k in self._match(boxes, wanted, list(free.values()), t):
                k.follow(boxes[i], t, steer)
                ids[i] = k.id
                del free[k.id]
        for k in free.values():
            k.missed += 1
        alive = [k for k in alive if k.id not in free or t - k.seen <= lost]
        ended = len(self.tracks) - len(alive)
        started = 0
        for i in strong:
            if ids[i] is None:
                track = Track(self._next_id, boxes[i], t)
                self._next_id += 1
                alive.append(track)
                ids[i] = track.id
                started += 1
        self.tracks = alive
        return Update(ids, started, ended)

    def _match(
        self, boxes: np.ndarray, wanted: list[int], tracks: list[Track], t: float
    ) -> list[tuple[int, Track]]:
        """Greedy pairs of detections `wanted` and `tracks`, by IOU, best first."""
        if not wanted or not tracks:
            return []
        predicted = np.stack([k.predicted(t) for k in tracks])
        overlap = iou_matrix(boxes[wanted], predicted)
        pairs: list[tuple[int, Track]] = []
        while True:
            d, k = np.unravel_index(int(np.argmax(overlap)), overlap.shape)
            if overlap[d, k] < self.spec.iou or overlap[d, k] <= 0:
                return pairs
            pairs.append((wanted[d], tracks[k]))
            overlap[d, :] = -1.0
            overlap[:, k] = -1.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IOU of each box of `a` (N, 4) with each of `b` (M, 4): (N, M)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def tag(detections: list[dict[str, Any]], tracker: Tracker, threshold: float, t: float) -> Update:
    """Set `track_id` on each of a payload's `detections` in place, removing the weak ones
    that continued no track; the update's counts."""
    boxes = np.array([d["box"] for d in detections], dtype=np.float64).reshape(-1, 4)
    scores = np.array([d["score"] for d in detections], dtype=np.float64)
    update = tracker.update(boxes, scores, threshold, t)
    kept = []
    for d, track_id in zip(detections, update.ids, strict=True):
        if track_id is not None:
            d["track_id"] = track_id
            kept.append(d)
    detections[:] = kept
    return update
