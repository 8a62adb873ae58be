"""Optional OpenTelemetry tracing: a span per frame, with a child span per stage.

Off by default (`EDGE_TRACING=1` turns it on; the `otel` extra installs the SDK and the OTLP
exporter, configured by the standard `OTEL_EXPORTER_OTLP_*` variables). Spans are recorded
after the fact from the timestamps the workers already take, so tracing adds no work to the
frame path when it is off and little when it is on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("edge.tracing")


class FrameTracer:
    def __init__(self, provider: Any) -> None:
        self._tracer = provider.get_tracer("edge-gateway")
        # our clocks are time.monotonic(); spans want epoch nanoseconds
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def _ns(self, t: float) -> int:
        return int(t * 1e9) + self._offset_ns

    def frame(
        self,
        *,
        session: str,
        seq: int,
        model: str,
        transport: str,
        outcome: str,
        received: float,
        stages: list[tuple[str, float, float]],
        end: float,
    ) -> None:
        from opentelemetry import trace

        root = self._tracer.start_span(
            "frame",
            start_time=self._ns(received),
            attributes={
                "edge.session": session,
                "edge.seq": seq,
                "edge.model": model,
                "edge.transport": transport,
                "edge.outcome": outcome,
            },
        )
        ctx = trace.set_span_in_context(root)
        for name, t0, t1 in stages:
            child = self._tracer.start_span(name, context=ctx, start_time=self._ns(t0))
            child.end(end_time=self._ns(t1))
        root.end(end_time=self._ns(end))


def from_settings(enabled: bool) -> FrameTracer | None:
    """The process-wide tracer with an OTLP exporter, or None when tracing is off."""
    if not enabled:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.error(
            "EDGE_TRACING is on but the otel extra is not installed: "
            "pip install 'edge-gateway[otel]'; tracing stays off"
        )
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "edge-gateway"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return FrameTracer(provider)
