"""Optional OpenTelemetry tracing: one span per frame with a child per stage."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge.tracing import FrameTracer
from tests.conftest import running, settings_for
from tests.wsclient import next_reply, open_stream

pytestmark = pytest.mark.integration


async def test_a_span_per_frame_with_stage_children(face_repo: Path, face_jpeg: bytes) -> None:
    """Guards against spans with wrong parents, clocks or missing stages."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = settings_for(face_repo)
    async with running(settings, tracer=FrameTracer(provider)) as (url, _):
        async with aiohttp.ClientSession() as http:
            ws, books = await open_stream(http, url)
            await ws.send_bytes(face_jpeg)
            assert (await next_reply(ws))["type"] == "result"
            await ws.close()
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "frame"]
    assert len(roots) == 1
    root = roots[0]
    assert root.attributes is not None
    assert root.attributes["edge.session"] == books.hello["session"]
    assert root.attributes["edge.seq"] == 0 and root.attributes["edge.model"] == "blazeface@1"
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == root.context.span_id}
    assert set(children) == {"queue", "decode", "inference", "postprocess"}
    for c in children.values():
        assert root.start_time <= c.start_time <= c.end_time <= root.end_time
