"""Which tracker: IOU against constant-velocity predictions, with and without ByteTrack's
second pass over weak detections, and plain IOU for reference, on the clips the tracking
tests make (tests/test_tracking.py) and harder ones where the face itself weakens.

Each clip is a list of frames of a face photo pasted on grey, moving; the truth is where
each face was pasted. BlazeFace (models/blazeface) runs once on every frame, JPEG-encoded
and decoded as a client's would be, keeping detections down to ByteTrack's low score; each
method then tracks the same detections (edge/inference/tracking.py, `tag`):

  - `iou`: IOU matching with no motion (every track's velocity held at zero);
  - `iou+motion`: IOU against constant-velocity predictions, detections at the threshold
    only (the second pass off: `low` above the threshold);
  - `iou+motion+low`: the same, then ByteTrack's second pass: detections from `low` up to
    the threshold may continue tracks left unmatched (the gateway's tracker as shipped).

Counted against the truth, per clip: frames where a face in view had no reported detection
(missed), ID switches (a face's reported ID changes), fragmentations (a face's track is
interrupted while it stays in view and resumes), reported detections on no face (false),
distinct IDs per face, and the tracker's CPU time per frame (microseconds, `tag` alone).

    python bench/tracking.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from edge.bench.baselines import model_file  # noqa: E402
from edge.inference.decode import decode  # noqa: E402
from edge.inference.modelspec import ModelSpec  # noqa: E402
from edge.inference.tasks import get_task  # noqa: E402
from edge.inference.tracking import Tracker, TrackingSpec, tag  # noqa: E402
from tests.imagedata import load_rgb  # noqa: E402

W, H = 640, 360
LOST_AFTER = 6  # frames, as the tracking tests' model sets it
LOW = 0.1
#: the frames of a clip where its face is degraded, in the harder clips
WEAK = range(20, 28)


@dataclass
class Clip:
    name: str
    #: per frame: its sequence number (gaps: frames dropped) and each face's paste (x, y)
    frames: list[tuple[int, list[tuple[int, int]]]]
    #: what is done to the face in a frame (None: nothing)
    spoil: Callable[[int, np.ndarray], np.ndarray] | None = None


def face() -> np.ndarray:
    return load_rgb("astronaut.png")[40:220, 140:300]


def occluded(seq: int, f: np.ndarray) -> np.ndarray:
    """The lower 70% of the face behind something grey (passing behind a post)."""
    if seq in WEAK:
        f = f.copy()
        f[int(f.shape[0] * 0.3) :] = 128
    return f


def blurred(seq: int, f: np.ndarray) -> np.ndarray:
    """Heavy motion blur (a burst of speed)."""
    return np.asarray(Image.fromarray(f).filter(ImageFilter.BoxBlur(20))) if seq in WEAK else f


def dim(seq: int, f: np.ndarray) -> np.ndarray:
    """A tenth of the contrast (a light going out)."""
    return (128 + (f.astype(np.float32) - 128) * 0.1).astype(np.uint8) if seq in WEAK else f


def clips() -> list[Clip]:
    sweep = [(i, [(20 + 4 * i, 90)]) for i in range(60)]
    crossing = [(i, [(20 + 7 * i, 20), (440 - 7 * i, 160)]) for i in range(60)]
    dropped = [(i, [(20 + 4 * i, 90)]) for i in range(0, 90, 3)]
    fast = [(i, [(20 + 10 * i, 90)]) for i in (0, 1, 2, *range(8, 44, 6))]
    here, away = [(200, 90)], []
    presence = (
        [here] * 3 + [away] * (LOST_AFTER - 2) + [here] * 3 + [away] * (LOST_AFTER + 2) + [here] * 2
    )
    return [
        Clip("one face moving (60 frames)", sweep),
        Clip("two faces crossing (60)", crossing),
        Clip("leaving and coming back (22)", list(enumerate(presence))),
        Clip("dropped frames: every 3rd of 90", dropped),
        Clip("fast (10 px a frame), then every 6th frame", fast),
        Clip("occluded for 8 frames (60)", sweep, occluded),
        Clip("motion blur for 8 frames (60)", sweep, blurred),
        Clip("low light for 8 frames (60)", sweep, dim),
        Clip("two crossing, occluded for 8 (60)", crossing, occluded),
    ]  # fmt: skip


class Detector:
    """BlazeFace as the gateway runs it, one frame at a time, down to a given score."""

    def __init__(self, models: Path) -> None:
        self.spec = ModelSpec.load(models / "blazeface")
        self.task = get_task(self.spec.task)(self.spec)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_file(models, "blazeface")), opts)
        self.feed = self.session.get_inputs()[0].name

    def __call__(self, jpeg: bytes, floor: float) -> list[dict[str, Any]]:
        image = decode(jpeg, self.task.decode_hint(), 1 << 30)
        tensor, ctx = self.task.preprocess(image)
        out = self.session.run(None, {self.feed: tensor[None]})
        return list(self.task.postprocess([o[0] for o in out], ctx, image, floor)["detections"])


def render(clip: Clip, seq: int, places: list[tuple[int, int]]) -> bytes:
    canvas = np.full((H, W, 3), 128, np.uint8)
    for x, y in places:
        f = face() if clip.spoil is None else clip.spoil(seq, face())
        canvas[y : y + f.shape[0], x : x + f.shape[1]] = f
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@dataclass
class Score:
    """What one method reported on one clip, counted against the truth (see above)."""

    ids: dict[int, set[int]] = field(default_factory=dict)  # face -> IDs it was given
    missed: int = 0
    switches: int = 0
    fragments: int = 0
    false: int = 0  # reported boxes on no face
    cpu_us: float = 0.0


def owner(box: list[float], places: list[tuple[int, int]]) -> int | None:
    """The face (its index) whose paste holds the box's centre, nearest first."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    fh, fw = face().shape[:2]
    inside = [
        (abs(cx - x - fw / 2) + abs(cy - y - fh / 2), i)
        for i, (x, y) in enumerate(places)
        if x <= cx <= x + fw and y <= cy <= y + fh
    ]
    return min(inside)[1] if inside else None


def track(
    clip: Clip, found: list[list[dict[str, Any]]], threshold: float, low: float,
    how: tuple[bool, bool], repeat: int,
) -> Score:  # fmt: skip
    """One method over one clip's detections: what it reported, scored against the truth.
    `how`: whether motion is predicted, whether weak detections measure it too."""
    motion, weak_steer = how
    spec = TrackingSpec(True, LOST_AFTER, 0.3, low)
    score = Score()
    last: dict[int, tuple[int, int]] = {}  # face -> the ID it was last reported with, when
    gap: dict[int, int] = {}  # face -> frames missed in view (> 0) or out of view (< 0)
    cpu = 0.0
    for run in range(repeat):
        tracker = Tracker(spec, weak_steer=weak_steer)
        for (seq, places), dets in zip(clip.frames, found, strict=True):
            kept = [dict(d) for d in dets if d["score"] >= min(low, threshold)]
            t0 = time.process_time()
            tag(kept, tracker, threshold, seq)
            if not motion:
                for k in tracker.tracks:
                    k.velocity[:] = 0.0
            cpu += time.process_time() - t0
            if not run:
                _score(score, kept, places, seq, last, gap)
    score.cpu_us = 1e6 * cpu / (repeat * len(clip.frames))
    return score


def _score(
    score: Score, kept: list[dict[str, Any]], places: list[tuple[int, int]], seq: int,
    last: dict[int, tuple[int, int]], gap: dict[int, int],
) -> None:  # fmt: skip
    """Count one frame's reported detections against where the faces were. A face that left
    the view for more than LOST_AFTER frames should come back with a new ID: no switch; a
    face that stayed in view should keep its ID however long it was missed."""
    reported: dict[int, int] = {}
    for d in kept:
        who = owner(d["box"], places)
        if who is None:
            score.false += 1
        else:
            reported.setdefault(who, d["track_id"])
    for who in last:
        if who >= len(places):
            gap[who] = min(0, gap.get(who, 0)) - 1
    for who in range(len(places)):
        if who not in reported:
            score.missed += 1
            gap[who] = max(0, gap.get(who, 0)) + 1 if who in last else 0
            continue
        tid = reported[who]
        score.ids.setdefault(who, set()).add(tid)
        before, missed = last.get(who), gap.get(who, 0)
        if before is not None and before[0] != tid and missed >= -LOST_AFTER:
            score.switches += 1
        elif before is not None and before[0] == tid and missed > 0:
            score.fragments += 1
        last[who], gap[who] = (tid, seq), 0


#: name, motion predicted, the second pass on, weak detections measure the motion too
METHODS = (
    ("iou", False, False, False),
    ("iou+motion", True, False, False),
    ("iou+motion+low", True, True, True),
    ("iou+motion+low, weak keep the motion", True, True, False),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--repeat", type=int, default=200, help="tracker runs per clip, for CPU time")
    args = ap.parse_args()
    detector = Detector(args.models)
    threshold = detector.spec.threshold
    print(f"BlazeFace threshold {threshold}, low {LOW}, lost_after_frames {LOST_AFTER}, iou 0.3")
    print()
    head = ("clip", "method", "missed", "ID switches", "fragmentations", "false",
            "IDs per face", "CPU per frame (us)")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for clip in clips():
        found = [detector(render(clip, seq, places), LOW) for seq, places in clip.frames]
        for name, motion, second_pass, weak_steer in METHODS:
            low = LOW if second_pass else 1.0  # 1.0: no detection is weak, the pass is off
            s = track(clip, found, threshold, low, (motion, weak_steer), args.repeat)
            ids = ", ".join(str(len(v)) for _, v in sorted(s.ids.items()))
            print(f"| {clip.name} | {name} | {s.missed} | {s.switches} | {s.fragments} | "
                  f"{s.false} | {ids} | {s.cpu_us:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
