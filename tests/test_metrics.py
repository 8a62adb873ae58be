"""The per-frame metrics gather in plain Python and are published in batches
(edge/metrics/buffer.py): what a scrape shows must be what prometheus_client would have shown had
every write gone to it directly, exactly, whichever thread wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from edge.metrics import Metrics
from edge.metrics import buffer as metricbuffer

pytestmark = pytest.mark.unit

_BUCKETS = (0.001, 0.01, 0.1, 1.0)
#: on the bounds, between them, below and above all of them
_AMOUNTS = (0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 1.0, 3.0, 0.001, 7.5)


def test_a_flushed_histogram_reads_as_one_observed_directly() -> None:
    """Bucket counts added in bulk (prometheus_client has no public call for it) must expose
    the same buckets, count and sum as `observe`, value for value, bounds included: a
    prometheus_client release that changes its histograms fails here, not in production."""
    direct_registry, buffered_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", ["m"], buckets=_BUCKETS, registry=direct_registry)
    buffered = metricbuffer.histogram("h", "h", ["m"], buckets=_BUCKETS, registry=buffered_registry)
    for amount in _AMOUNTS:
        direct.labels("a").observe(amount)
        buffered.labels("a").observe(amount)
    buffered.flush()
    buffered.flush()  # nothing new: publishes nothing twice
    assert _without_created(buffered_registry) == _without_created(direct_registry)


def test_counts_from_many_threads_are_exact() -> None:
    """Worker threads and the event loop write the same children at once, while flushes
    run: no increment may be lost or published twice."""
    m = Metrics()
    threads, each = 4, 20_000
    stop = threading.Event()

    def write() -> None:
        child = m.received.labels("websocket", "model")
        gauge = m.inflight.labels("model")
        for _ in range(each):
            child.inc()
            gauge.inc()
            gauge.dec()

    def flush() -> None:
        while not stop.is_set():
            m.flush()

    flusher = threading.Thread(target=flush)
    flusher.start()
    writers = [threading.Thread(target=write) for _ in range(threads)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    flusher.join()
    m.flush()
    r = m.registry
    labels = {"transport": "websocket", "model": "model"}
    assert r.get_sample_value("edge_frames_received_total", labels) == threads * each
    assert r.get_sample_value("edge_inflight_frames", {"model": "model"}) == 0


def test_series_exist_at_zero_before_any_flush_and_a_scrape_flushes() -> None:
    """A series an autoscaler reads exists from its first use, and /metrics shows every
    write made before the scrape in the process that answers it."""
    m = Metrics()
    m.model_seen("blazeface")
    m.batch_limit.labels("blazeface").set(4)
    text = m.exposition().decode()
    assert 'edge_inflight_frames{model="blazeface"} 0.0' in text
    assert 'edge_batch_limit{model="blazeface"} 4.0' in text
    m.dropped.labels("grpc", "blazeface", "stale").inc(3)
    text = m.exposition().decode()
    assert 'edge_frames_dropped_total{model="blazeface",reason="stale",transport="grpc"} 3.0' in (
        text
    )


_OTHER_PROCESS = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from edge.metrics import Metrics

where = Path(sys.argv[1])
m = Metrics(where)
m.processed.labels("websocket", "blazeface").inc()

def others_see():
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(where))
    labels = {"transport": "websocket", "model": "blazeface"}
    return merged.get_sample_value("edge_frames_processed_total", labels) or 0.0

before = others_see()
m.flush()
print(before, others_see())
"""


def test_another_process_sees_what_was_flushed(tmp_path: Path) -> None:
    """In multiprocess mode each serving process writes its own files: another process's
    scrape reads what this one flushed, and nothing it has not yet (the pulse flushes every
    FLUSH_EVERY_S). Run in a process of its own: prometheus_client takes multiprocess mode
    from the environment when it is imported."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["0.0", "1.0"]


def _without_created(registry: CollectorRegistry) -> list[str]:
    """The exposition less its `_created` lines (when each series was made)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]
