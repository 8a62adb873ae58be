"""Prometheus metrics: the names are a public contract (docs/metrics.md, the autoscaler).

One registry per app, so several apps in one process (the tests) do not collide. Label values
are bounded: transports, model names, reasons, stages, process numbers and the configured sinks
(named without credentials), never session ids or addresses.

With several serving processes, prometheus_client's multiprocess mode keeps each process's
values in a file of the supervisor's directory, and any process's `/metrics` reads them all:
counters and histograms are summed, each gauge is combined as its `multiprocess_mode` says
(values of processes that died are dropped from the live modes; counters keep them).

The metrics written for every frame (counts, stage times, in-flight frames) gather in plain
Python and are published in batches (edge/metrics/buffer.py): a frame costs a few additions,
not thirty locked, system-calling writes.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from edge import __version__
from edge.metrics import buffer as buffered

TRANSPORTS = ("websocket", "webrtc", "http", "grpc", "kserve-grpc")
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: the pipeline's stages: a frame's decode, preprocess and postprocess, a batch's session call
STAGES = ("decode", "preprocess", "session", "postprocess")


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        r = self.registry = CollectorRegistry()
        self.received = buffered.counter(
            "edge_frames_received", "Frames taken off the wire", ["transport", "model"], registry=r
        )
        self.processed = buffered.counter(
            "edge_frames_processed",
            "Frames answered with a result",
            ["transport", "model"],
            registry=r,
        )
        self.dropped = buffered.counter(
            "edge_frames_dropped",
            "Frames answered with a drop notice",
            ["transport", "model", "reason"],
            registry=r,
        )
        self.errors = buffered.counter(
            "edge_frame_errors", "Frames answered with an error", ["transport", "stage"], registry=r
        )
        self.inference_latency = buffered.histogram(
            "edge_inference_latency_seconds",
            "Model run time per batch",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.stage_latency = buffered.histogram(
            "edge_stage_seconds",
            "Time in one pipeline stage: per frame (decode, preprocess, postprocess), or per "
            "batch for the session call itself (session)",
            ["model", "stage"],
            buckets=(0.0001, 0.00025, 0.0005, *_LATENCY),
            registry=r,
        )
        self.frame_latency = buffered.histogram(
            "edge_frame_latency_seconds",
            "Frame received to its reply sent",
            ["transport", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = buffered.histogram(
            "edge_queue_wait_seconds",
            "Frame received to taken by a worker",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = buffered.histogram(
            "edge_batch_size",
            "Frames per model run",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.stage_batch_size = buffered.histogram(
            "edge_stage_batch_size",
            "Crops per run of a model's later stage (model.toml [[stages]]), by its task",
            ["model", "task"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.stage_batch_frames = buffered.histogram(
            "edge_stage_batch_frames",
            "Frames (of different streams) whose crops one run of a model's later stage "
            "carried, by its task",
            ["model", "task"],
            buckets=(1, 2, 3, 4, 6, 8, 16),
            registry=r,
        )
        self.batch_limit = buffered.gauge(
            "edge_batch_limit",
            "Frames a batch may gather now: the measured best size up to max_batch",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.active_streams = Gauge(
            "edge_active_streams",
            "Open streams",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight = buffered.gauge(
            "edge_inflight_frames",
            "Frames taken by workers, not yet answered",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_ready = Gauge(
            "edge_model_ready",
            "1 while a model version serves (in every serving process)",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.process_restarts = Counter(
            "edge_process_restarts",
            "Serving processes replaced after they died (counted by the supervisor)",
            registry=r,
        )
        self.resident_bytes = Gauge(
            "edge_process_resident_bytes",
            "Resident memory of each serving process",
            ["process"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Gauge(
            "edge_event_loop_lag_seconds",
            "How far each serving process's event loop fell behind, worst of the last second",
            ["process"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.saturated = Gauge(
            "edge_process_saturated",
            "1 while a serving process refuses new streams because its event loop lags",
            ["process"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_load_failures = Counter(
            "edge_model_load_failures", "Failed model loads", ["model"], registry=r
        )
        self.streams_refused = Counter(
            "edge_streams_refused", "Stream requests refused", ["transport", "reason"], registry=r
        )
        self.shadow_latency = Histogram(
            "edge_shadow_latency_seconds",
            "Model run time of a shadow version, per batch",
            ["model", "version"],
            buckets=_LATENCY,
            registry=r,
        )
        self.auth_refused = Counter(
            "edge_auth_refused",
            "Requests and WebSockets refused by the origin, token or stream-quota checks",
            ["reason"],
            registry=r,
        )
        self.rate_limited = buffered.counter(
            "edge_frames_rate_limited",
            "Frames over a frame-rate limit (also counted as dropped, reason rate_limited)",
            ["transport", "limit"],
            registry=r,
        )
        self.shadow_agreement = Histogram(
            "edge_shadow_agreement",
            "Agreement of a shadow version with the serving one",
            ["model", "version"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
            registry=r,
        )
        self.canary_decisions = Counter(
            "edge_canary_decisions",
            "Canary trials decided: promoted or rolled_back (counted once, by the process "
            "that decided)",
            ["model", "version", "decision"],
            registry=r,
        )
        self.canary_frames = Gauge(
            "edge_canary_frames",
            "Frames a canary version has answered in its trial",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.canary_error_rate = Gauge(
            "edge_canary_error_rate",
            "Share of a canary version's frames answered with an error",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.canary_latency_ratio = Gauge(
            "edge_canary_latency_ratio",
            "A canary version's p95 session time per frame over its incumbent's, same batches",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.canary_agreement = Gauge(
            "edge_canary_agreement",
            "Mean agreement of a canary version's detections with its incumbent's",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.sink_published = Counter(
            "edge_sink_published",
            "Messages a result sink handed to its broker",
            ["sink"],
            registry=r,
        )
        self.sink_dropped = Counter(
            "edge_sink_dropped",
            "Messages a result sink did not publish: queue_full (the oldest, while the broker "
            "was slow or down), publish_failed, shutdown",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_connected = Gauge(
            "edge_sink_connected",
            "1 while a result sink is connected to its broker (in every serving process)",
            ["sink"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.tracks_active = buffered.gauge(
            "edge_tracks_active",
            "Tracks the streams of a tracked model follow now",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tracks_started = buffered.counter(
            "edge_tracks_started",
            "Tracks started: an object a tracked model's stream had not followed",
            ["model"],
            registry=r,
        )
        self.tracks_ended = buffered.counter(
            "edge_tracks_ended",
            "Tracks ended: unseen for more than lost_after_frames, or their stream closed",
            ["model"],
            registry=r,
        )
        #: the per-frame metrics, gathered in plain Python until a flush (edge/metrics/buffer.py)
        self._buffered = [v for v in vars(self).values() if isinstance(v, buffered.Buffered)]
        # Info has no multiprocess form: it lives in a registry of its own, added at scrape time
        self._build = r if multiprocess_dir is None else CollectorRegistry()
        Info("edge_build", "Build information", registry=self._build).info({"version": __version__})
        # series an autoscaler reads exist from the start, at zero, not after first use
        for transport in TRANSPORTS:
            self.active_streams.labels(transport)

    def flush(self) -> None:
        """Publish what the per-frame metrics gathered since the last flush
        (edge/metrics/buffer.py): every FLUSH_EVERY_S, at each scrape and at shutdown."""
        for metric in self._buffered:
            metric.flush()

    def exposition(self) -> bytes:
        """The text for /metrics: this process's registry, or every serving process's (each
        other one's as of its last flush, at most FLUSH_EVERY_S and its loop's lag ago)."""
        self.flush()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return generate_latest(merged) + generate_latest(self._build)

    def model_seen(self, name: str) -> None:
        """Create a model's per-model series at zero as soon as it is known."""
        self.inflight.labels(name)
        self.batch_limit.labels(name)  # also opens its multiprocess file now, not mid-run
        for stage in STAGES:
            self.stage_latency.labels(name, stage)
