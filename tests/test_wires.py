"""The wires: each transport's encoding of the pipeline's typed replies (edge.frames.Wire), and
the pipeline handing them over encoded by the stream's own wire."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge import codec
from edge.core.outbox import Outbox
from edge.core.pipeline import Pipeline, Reply
from edge.core.stream import Stream
from edge.frames import Dropped, Error, Frame, Notice, RawInput, Result, Timing, Wire
from edge.inference.tasks.blazeface import BlazeFace
from edge.inference.tracking import TrackingSpec
from edge.kserve.infer import pipeline_tensors
from edge.metrics import Metrics
from edge.models.repository import Route
from edge.transports.grpc.inference import PredictTranslation

pytestmark = pytest.mark.unit

TIMING = Timing(queue_ms=1.23456, inference_ms=0.7, total_ms=2.9)
FACE = {"label": "face", "score": 0.93, "box": [10.0, 20.0, 110.0, 140.0], "keypoints": [[1, 2]]}
RESULT = Result(12, "blazeface@1", 640, 480, TIMING, {"detections": [FACE]})


def test_json_is_the_protocols_text_and_refuses_nan() -> None:
    """Guards the WebSocket's bytes (docs/protocol.md) and the refusal of NaN that answers a
    broken model's frame postprocess_failed rather than sending text no parser accepts."""
    wire: Wire[str] = codec.JSON
    assert wire.result(RESULT) == (
        '{"type":"result","seq":12,"model":"blazeface@1","width":640,"height":480,'
        '"detections":[{"label":"face","score":0.93,"box":[10.0,20.0,110.0,140.0],'
        '"keypoints":[[1,2]]}],"timing":{"queue_ms":1.235,"inference_ms":0.7,"total_ms":2.9}}'
    )
    assert wire.error(Error(3, "bad_frame", "no")) == (
        '{"type":"error","code":"bad_frame","message":"no","seq":3}'
    )
    assert wire.error(Error(None, "bad_message", "no")) == (
        '{"type":"error","code":"bad_message","message":"no"}'
    )
    assert wire.dropped(Dropped((4,), "stale")) == '{"type":"dropped","seq":4,"reason":"stale"}'
    assert json.loads(wire.dropped(Dropped((4, 5), "stale")))["seqs"] == [4, 5]
    assert wire.notice(Notice("credit", {"n": 1})) == '{"type":"credit","n":1}'
    nan = Result(1, "m@1", 1, 1, TIMING, {"classes": [{"score": float("nan")}]})
    with pytest.raises(ValueError):
        wire.result(nan)


def test_unary_answers_leave_out_the_seq() -> None:
    assert "seq" not in json.loads(codec.unary(RESULT))
    assert json.loads(codec.unary(Dropped((0,), "rate_limited"))) == {
        "type": "dropped",
        "reason": "rate_limited",
    }
    assert json.loads(codec.unary(Error(0, "bad_frame", "x")))["code"] == "bad_frame"


def test_raw_outputs_go_as_arrays_and_as_base64_json() -> None:
    """A raw input's result carries the network's arrays; JSON carries them as dtype, shape
    and base64 bytes, exactly."""
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = Result(0, "m@1", 0, 0, TIMING, outputs=(out,))
    msg = json.loads(codec.result(raw))
    (item,) = msg["outputs"]
    assert item["dtype"] == "<f4" and item["shape"] == [2, 3]
    assert base64.b64decode(item["data"]) == out.tobytes()


def test_grpc_builds_responses_from_the_typed_values() -> None:
    """InferenceService responses straight from the result: no JSON in between, the same
    fields (timing rounded as the JSON has it); one response per dropped seq; none for
    notices or errors about control messages."""
    wire = PredictTranslation()
    (r,) = wire.result(RESULT)
    assert (r.seq, r.model, r.width, r.height) == (12, "blazeface@1", 640, 480)
    assert r.timing.queue_ms == pytest.approx(1.235)
    (det,) = r.detections
    assert det.label == "face" and det.score == pytest.approx(0.93)
    assert (det.box.x1, det.box.y2) == (10.0, 140.0) and len(det.keypoints) == 1
    classes = Result(
        0, "c@1", 4, 4, TIMING, {"classes": [{"index": 7, "label": "cat", "score": 1}]}
    )
    (c,) = wire.result(classes)
    assert c.label == 7 and list(c.scores) == [1.0]
    assert [d.seq for d in wire.dropped(Dropped((3, 4, 5), "stale"))] == [3, 4, 5]
    (e,) = wire.error(Error(9, "bad_frame", "no"))
    assert (e.seq, e.code, e.message) == (9, "bad_frame", "no")
    assert wire.error(Error(None, "bad_message", "no")) == []
    assert wire.notice(Notice("pong")) == []


def test_grpc_merges_a_run_of_drops_when_the_client_asks() -> None:
    """A stream whose client set merge_dropped gets each run of drops the outbox merged as one
    DROPPED response naming every frame (`seqs`, `seq` the first), as the WebSocket's; the
    others keep one response per frame, which is all a client without `seqs` can read."""
    wire = PredictTranslation()
    wire.merge_dropped = True
    (r,) = wire.dropped(Dropped((3, 4, 9), "stale"))
    assert (r.seq, list(r.seqs), r.reason) == (3, [3, 4, 9], "stale")
    wire.merge_dropped = False
    assert [list(d.seqs) for d in wire.dropped(Dropped((3, 4), "stale"))] == [[], []]


def test_kserve_tensors_from_the_typed_result() -> None:
    tensors = {t.name: t for t in pipeline_tensors(BlazeFace, RESULT)}
    assert tensors["boxes"].data.tolist() == [[10.0, 20.0, 110.0, 140.0]]
    assert tensors["labels"].data.tolist() == [b"face"]
    assert json.loads(tensors["result"].data[0]) == json.loads(codec.unary(RESULT))


class Task:
    """Postprocesses every frame to one score: `score`."""

    score = 0.5

    def decode_hint(self) -> tuple[int, int]:
        return (4, 4)

    def preprocess(self, image: Any) -> tuple[np.ndarray, Any]:
        return np.zeros(3, np.float32), "ctx"

    def postprocess(self, rows: Any, ctx: Any, image: Any, threshold: float) -> dict[str, Any]:
        assert ctx == "ctx"
        return {"classes": [{"index": 0, "label": "x", "score": self.score}]}


class Picture:
    width = height = 4

    def rgb(self, width: int, height: int) -> np.ndarray:
        return np.zeros((height, width, 3), np.uint8)


def _model(task: Task) -> Any:
    return SimpleNamespace(
        name="m",
        ref="m@1",
        task=task,
        sample_shape=(3,),
        sample_dtype=np.dtype(np.float32),
        spec=SimpleNamespace(threshold=0.5, shadow={}, tracking=TrackingSpec()),
        stages=(),
        sizer=SimpleNamespace(record=lambda n, s: None, best=1),
        run_costed=lambda batch, worker: ([batch * 2], 0.001, 0.001),
    )


def _serve(task: Task, wire: Wire[Any], data: Any) -> list[Reply]:
    async def send(_message: Any) -> None:
        pass

    replies: list[Reply] = []
    canaries = SimpleNamespace(judge=lambda model, payloads, cost_s, rerun, sources=(): None)
    repo = SimpleNamespace(shadow_of=lambda name: None, canaries=canaries)
    pipeline = Pipeline(repo, Metrics(), replies.append, max_pixels=1 << 20)  # type: ignore[arg-type]
    outbox = Outbox(send, max_pending=4, send_timeout=1.0, wire=wire)
    stream = Stream("s1", "test", Route("m"), outbox)
    pipeline.serve(0, _model(task), [(stream, Frame("s1", 7, 0.0, data))])
    return replies


def test_the_pipeline_encodes_with_the_streams_wire() -> None:
    """Each result is encoded once, on the worker, by the stream's own wire (JSON here,
    responses for gRPC); a payload JSON cannot hold is answered postprocess_failed."""
    (reply,) = _serve(Task(), codec.JSON, Picture())
    assert isinstance(reply.answer, Result) and reply.answer.seq == 7
    assert reply.message == codec.result(reply.answer)
    (reply,) = _serve(Task(), PredictTranslation(), Picture())
    assert [r.seq for r in reply.message] == [7] and reply.message[0].classes[0].label == "x"
    broken = Task()
    broken.score = float("inf")
    (reply,) = _serve(broken, codec.JSON, Picture())
    assert isinstance(reply.answer, Error) and reply.answer.code == "postprocess_failed"
    assert reply.answer.stage == "postprocess" and json.loads(reply.message)["seq"] == 7
    (reply,) = _serve(Task(), codec.JSON, RawInput(np.ones(3, np.float32)))
    assert isinstance(reply.answer, Result) and reply.answer.outputs is not None
    assert reply.answer.outputs[0].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "value",
    [
        {"detections": [{"label": "face", "score": 0.93123, "box": [10.5, 20.25, 1e16, 1e-7]}]},
        {"text": 'naïve ✓ \u2028 "quoted"', "nothing": None, "nullable": "null"},
        {"big": 2**70, "negative": -(2**63), "tiny": 5e-324, "keys": {1: "int key"}},
        {"nested": [[[]], {}, True, False, 0, -0.0]},
    ],
)
def test_json_text_reads_back_as_the_standard_library_writes_it(value: Any) -> None:
    """The replies' encoder (orjson where installed, the standard library where its text
    would differ or it cannot) writes what json.loads reads back as the same values."""
    text = codec._dumps(value)
    assert json.loads(text) == json.loads(codec._stdlib_dumps(value))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_json_text_refuses_nan_and_infinities(bad: float) -> None:
    """orjson writes NaN and the infinities as null; a result holding one must fail instead
    (the frame is answered postprocess_failed), whichever encoder runs."""
    with pytest.raises(ValueError):
        codec.result(Result(0, "m@1", 1, 1, TIMING, {"score": bad}))
