"""A stream's tracker, fed on the worker that answers its frame (edge/inference/tracking.py).

A stream has at most one frame in flight (edge/core/scheduler.py), so one worker at a time
touches `Stream.tracker`, with no lock; when the stream closes, its tracks are ended under
the scheduler's lock by whoever holds the stream last: `withdraw` when no frame is in
flight, else the worker when it lets the stream go.
"""

from __future__ import annotations

from typing import Any

from edge.core.stream import Stream
from edge.inference.engine import LoadedModel
from edge.inference.tracking import Tracker, tag
from edge.metrics import Metrics


def floor(model: LoadedModel, threshold: float) -> float:
    """The score a tracked model's postprocess keeps detections from: ByteTrack's low one,
    so weak detections may continue tracks (`follow` drops those that do not)."""
    tracking = model.spec.tracking
    return min(threshold, tracking.low) if tracking.enabled else threshold


def follow(
    metrics: Metrics,
    stream: Stream,
    model: LoadedModel,
    payload: dict[str, Any],
    threshold: float,
    seq: int,
) -> None:
    """Give each detection of a tracked model's `payload` its `track_id` (in place), the
    frame's `seq` its clock."""
    tracking = model.spec.tracking
    if not tracking.enabled or "detections" not in payload:
        return
    tracker = stream.tracker
    if tracker is None or tracker.model != model.name or tracker.spec != tracking:
        end(metrics, stream)  # a new model (or its new settings): new tracks
        tracker = stream.tracker = Tracker(tracking, model.name)
    update = tag(payload["detections"], tracker, threshold, seq)
    if update.started:
        metrics.tracks_started.labels(model.name).inc(update.started)
    if update.ended:
        metrics.tracks_ended.labels(model.name).inc(update.ended)
    if update.started != update.ended:
        metrics.tracks_active.labels(model.name).inc(update.started - update.ended)


def end(metrics: Metrics, stream: Stream) -> None:
    """End every track of the stream (it closed, or changed model)."""
    tracker, stream.tracker = stream.tracker, None
    if tracker is None or not tracker.tracks:
        return
    n = len(tracker.tracks)
    metrics.tracks_ended.labels(tracker.model).inc(n)
    metrics.tracks_active.labels(tracker.model).dec(n)
