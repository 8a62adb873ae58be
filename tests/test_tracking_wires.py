"""Track IDs on every wire besides the WebSocket: gRPC PredictStream (the original contract's
stub, read with the full one), KServe v2 over REST and gRPC (Triton's own clients), and a
result sink (a real mosquitto), each against the real gateway serving a tracked BlazeFace
(tests/conftest.py's `tracked_repo`) with a face moving across frames made here; and the
device client's `edge stream --annotate`, which colours each track's boxes as the dashboard
does (tests/test_e2e.py)."""

from __future__ import annotations

import asyncio
import json
import queue
import re
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image, ImageColor

from edge.client import annotate, replies
from edge.inference.tracking import TRACK_COLOURS
from edge.transports.grpc.gen import inference_pb2 as ours
from tests import grpcclient as gc
from tests.conftest import running, settings_for
from tests.pace import deadline
from tests.sinks_util import lockstep, mosquitto, mqtt_messages, published, socket_results, until
from tests.test_sinks import sink_settings
from tests.test_tracking import frame, sweep
from tests.wsclient import open_stream

pytestmark = pytest.mark.integration

FRAMES = 12
NO_RATE_LIMITS = {"max_fps_per_stream": 0, "max_fps_per_client": 0}
TWO_FACES = ((60, 90), (400, 90))


def image_input(module: Any, data: bytes) -> Any:
    """The pipeline's `image` input, for tritonclient.http or tritonclient.grpc."""
    i = module.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(np.array([data], dtype=object))
    return i


async def test_grpc_stream_detections_carry_one_track_id(tracked_repo: Path) -> None:
    """Guards against gRPC PredictStream leaving `Detection.track_id` unset on a tracked model,
    or giving a face that moves across the stream's frames a new ID."""
    settings = settings_for(tracked_repo, **NO_RATE_LIMITS)
    async with (
        gc.grpc_gateway(settings) as (_, _, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        call = gc.stub(channel).PredictStream()
        got: list[ours.InferenceResponse] = []
        for data in sweep(FRAMES):  # one frame in flight: each gets its result
            await call.write(gc.request(data, "faces"))
            got.append(gc.full(await asyncio.wait_for(call.read(), deadline())))
        await call.done_writing()
    assert [r.status for r in got] == [ours.InferenceResponse.RESULT] * FRAMES
    detections = [d for r in got for d in r.detections]
    assert len(detections) >= 0.8 * FRAMES, got
    assert all(d.HasField("track_id") for d in detections)
    assert {d.track_id for d in detections} == {1}


async def test_kserve_rest_declares_and_returns_track_ids(tracked_repo: Path) -> None:
    """Guards against KServe REST leaving out the tracked model's `track_ids` output, or
    serving it in another datatype or shape than its metadata declares (INT64, one per row
    of `boxes`), as Triton's own client reads it."""
    async with running(settings_for(tracked_repo, **NO_RATE_LIMITS)) as (url, _):

        def infer() -> tuple[dict[str, Any], triton_http.InferResult]:
            c = triton_http.InferenceServerClient(url.removeprefix("http://"))
            meta = c.get_model_metadata("faces")
            return meta, c.infer("faces", [image_input(triton_http, frame(*TWO_FACES))])

        meta, r = await asyncio.to_thread(infer)
    declared = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert declared["track_ids"] == ("INT64", [-1])
    outputs = {o["name"]: o for o in r.get_response()["outputs"]}
    assert (outputs["track_ids"]["datatype"], outputs["track_ids"]["shape"]) == ("INT64", [2])
    ids = r.as_numpy("track_ids")
    assert ids.dtype == np.int64 and r.as_numpy("boxes").shape == (2, 4)
    assert sorted(ids.tolist()) == [1, 2]  # a unary call is a stream of one frame
    result = r.as_numpy("result")[0]
    message = json.loads(result if isinstance(result, str) else result.decode())
    assert [d["track_id"] for d in message["detections"]] == ids.tolist()


async def test_kserve_grpc_stream_keeps_track_ids_across_frames(tracked_repo: Path) -> None:
    """Guards against KServe gRPC's `track_ids` being missing, mistyped or misshapen, or
    ModelStreamInfer not keeping a moving face's ID across its frames."""
    settings = settings_for(tracked_repo, **NO_RATE_LIMITS)
    async with gc.grpc_gateway(settings) as (_, _, target):

        def run() -> tuple[dict[str, Any], list[Any]]:
            c = triton_grpc.InferenceServerClient(target)
            meta = c.get_model_metadata("faces", as_json=True)
            answers: queue.Queue[Any] = queue.Queue()
            c.start_stream(lambda result, error: answers.put(error or result))
            got = []
            for i, data in enumerate(sweep(FRAMES)):  # one request in flight
                c.async_stream_infer("faces", [image_input(triton_grpc, data)], request_id=str(i))
                got.append(answers.get(timeout=deadline()))
            c.stop_stream()
            c.close()
            return meta, got

        meta, got = await asyncio.to_thread(run)
    declared = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert declared["track_ids"] == ("INT64", ["-1"])
    assert all(isinstance(r, triton_grpc.InferResult) for r in got), got
    ids = []
    for r in got:
        out = next(o for o in r.get_response().outputs if o.name == "track_ids")
        rows = r.as_numpy("boxes").shape[0]
        assert (out.datatype, list(out.shape)) == ("INT64", [rows])
        ids += r.as_numpy("track_ids").tolist()
    assert len(ids) >= 0.8 * FRAMES and set(ids) == {1}, ids


async def test_mqtt_sink_publishes_track_ids(tracked_repo: Path, tmp_path: Path) -> None:
    """Guards against a sink publishing a tracked model's results without their detections'
    `track_id`, or with other IDs than the stream's own socket got."""
    broker = mosquitto(tmp_path)
    broker.start()
    try:
        settings = sink_settings(tracked_repo, f"mqtt://127.0.0.1:{broker.port}/edge")
        async with (
            mqtt_messages(broker.port) as got,
            running(settings) as (url, _),
            aiohttp.ClientSession() as http,
        ):
            ws, books = await open_stream(http, url, "faces")
            await lockstep(ws, books, sweep(FRAMES), lambda s: s >= FRAMES)
            await until(lambda: len(got) >= FRAMES, 30, f"{FRAMES} messages")
            await ws.close()
    finally:
        broker.stop()
    results = published(got)
    assert results == socket_results([(ws, books)])
    detections = [d for r in results.values() for d in r["detections"]]
    assert len(detections) >= 0.8 * FRAMES, results
    assert {d["track_id"] for d in detections} == {1}


@pytest.mark.unit
def test_annotate_colours_boxes_by_track_id() -> None:
    """Guards against `edge stream --annotate` drawing every track in one colour, a track ID
    lost when the client parses a result, or untracked boxes no longer in today's colour."""
    msg = {"type": "result", "seq": 0, "width": 200, "height": 100, "detections": [
        {"label": "face", "score": 0.9, "box": [10, 10, 60, 60], "track_id": 1},
        {"label": "face", "score": 0.9, "box": [75, 10, 125, 60], "track_id": 2},
        {"label": "face", "score": 0.9, "box": [140, 10, 190, 60]},
    ]}  # fmt: skip
    result = replies.parse(json.dumps(msg))
    assert isinstance(result, replies.Result)
    assert [d.track_id for d in result.detections] == [1, 2, None]
    picture = np.asarray(annotate.draw(Image.new("RGB", (200, 100), "gray"), result))
    tops = [tuple(picture[10, x].tolist()) for x in (35, 100, 165)]  # each box's top edge
    tracks = [ImageColor.getrgb(c) for c in TRACK_COLOURS]
    assert tops == [tracks[1], tracks[2], annotate.COLOR]


@pytest.mark.unit
def test_annotate_writes_text_under_boxes() -> None:
    """Guards against `edge stream --annotate` leaving out what a reading model read (or the
    client dropping `text` when it parses a result), or writing it anywhere but under its
    box."""
    msg = {"type": "result", "seq": 0, "width": 300, "height": 120, "detections": [
        {"label": "text", "score": 0.9, "box": [10, 10, 140, 40], "polygon": [[10, 10],
         [140, 10], [140, 40], [10, 40]], "text": "HELLO", "confidence": 0.97},
        {"label": "text", "score": 0.9, "box": [160, 10, 290, 40], "polygon": [[160, 10],
         [290, 10], [290, 40], [160, 40]]},
    ]}  # fmt: skip
    result = replies.parse(json.dumps(msg))
    assert isinstance(result, replies.Result)
    assert [(d.text, d.text_confidence) for d in result.detections] == [
        ("HELLO", 0.97), (None, None)
    ]  # fmt: skip
    grey = Image.new("RGB", (300, 120), "gray")
    picture = np.asarray(annotate.draw(grey, result)).astype(int)
    under = picture[42:70, 10:140]
    assert (np.abs(under - 128).sum(axis=2) > 60).sum() > 30, "no text under the HELLO box"
    assert (picture[42:70, 160:290] == 128).all(), "text under a box that read none"


@pytest.mark.unit
def test_the_dashboard_has_the_gateways_track_colours() -> None:
    """Guards against the dashboard's copy of the track palette (edge/web/app.js) drifting
    from the one the WebRTC return track and `edge stream --annotate` draw with: the same
    track would show in two colours."""
    app = (Path(__file__).resolve().parent.parent / "edge" / "web" / "app.js").read_text()
    (listed,) = re.findall(r'const TRACK_COLOURS = "([^"]*)"\.split\(" "\);', app)
    assert tuple(listed.split(" ")) == TRACK_COLOURS
