"""On a worker thread: one batch of frames from bytes to encoded replies.

Decode (told the smallest size the model needs), preprocess, one session run for the batch,
postprocess and JSON-encode each frame, record metrics and spans, sample a shadow run, feed a
canary trial (a canary's batch runs on the version it would replace too). Every
frame taken ends in exactly one reply, a result or a typed error naming the stage that failed;
no exception leaves a frame unanswered. Replies go to `push`, which hands them to the event
loop (edge/core/scheduler.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge import codec
from edge.core.stream import Stream
from edge.frames import Frame, FrameError, Image, RawInput, Timing
from edge.inference.decode import decode
from edge.inference.engine import LoadedModel
from edge.metrics import Metrics
from edge.models.repository import Repository
from edge.models.shadow import run_shadow, second_opinion
from edge.tracing import FrameTracer

log = logging.getLogger("edge.pipeline")


@dataclass(slots=True)
class Reply:
    """A worker's answer to one frame, handed to the event loop."""

    stream: Stream
    seq: int
    kind: str  # result | dropped | error
    text: str = ""  # encoded message, for results and errors
    reason: str = ""  # drop reason or error stage
    received_at: float = 0.0
    model: str = ""
    ref: str = ""  # name@version of the model that answered, for results


class Pipeline:
    def __init__(
        self,
        repo: Repository,
        metrics: Metrics,
        push: Callable[[Reply], None],
        *,
        max_pixels: int,
        max_png_pixels: int | None = None,
        tracer: FrameTracer | None = None,
    ) -> None:
        self._repo = repo
        self._metrics = metrics
        self._push = push
        self._max_pixels = max_pixels
        self._max_png_pixels = max_png_pixels
        self._tracer = tracer
        self._rng = random.Random()

    def serve(self, index: int, model: LoadedModel, jobs: list[tuple[Stream, Frame]]) -> None:
        """Answer every frame of `jobs` (claimed by worker `index`): a result or an error."""
        taken = time.monotonic()
        task = model.task
        fit = task.decode_hint()
        stage = self._metrics.stage_latency
        decoding = stage.labels(model.name, "decode")
        preprocessing = stage.labels(model.name, "preprocess")
        # per frame: stream, frame, image (None: a raw input), tensor, context, two clocks
        ready: list[tuple[Stream, Frame, Image | None, np.ndarray, Any, float, float]] = []
        for stream, frame in jobs:
            t_dec = time.monotonic()
            data = frame.data
            if isinstance(data, RawInput):
                if data.array.shape != model.sample_shape or data.array.dtype != model.sample_dtype:
                    shape = list(model.sample_shape)
                    msg = f"{model.ref} takes {shape}"
                    self.error(stream, frame, "bad_frame", msg, "decode", model.name)
                    continue
                ready.append((stream, frame, None, data.array, None, t_dec, t_dec))
                continue
            try:
                image = decode(data, fit, self._max_pixels, self._max_png_pixels)
                t_decoded = time.monotonic()
            except FrameError as e:
                self.error(stream, frame, e.code, e.message, "decode", model.name)
                continue
            except Exception as e:  # a decoder bug: this frame is bad, the worker goes on
                log.exception("session=%s seq=%d: decode failed", stream.id, frame.seq)
                self.error(stream, frame, "bad_frame", str(e), "decode", model.name)
                continue
            try:
                tensor, ctx = task.preprocess(image)
            except Exception as e:
                log.exception("session=%s seq=%d: preprocess failed", stream.id, frame.seq)
                self.error(stream, frame, "preprocess_failed", str(e), "preprocess", model.name)
                continue
            t_pre = time.monotonic()
            decoding.observe(t_decoded - t_dec)
            preprocessing.observe(t_pre - t_decoded)
            ready.append((stream, frame, image, tensor, ctx, t_dec, t_pre))
        if not ready:
            return
        t0 = time.monotonic()
        try:
            batch = np.stack([r[3] for r in ready]) if len(ready) > 1 else ready[0][3][None]
            outputs, session_s, cost_s = model.run_costed(batch, index)
        except Exception as e:
            log.error("model %s: inference failed on a batch of %d: %s", model.ref, len(ready), e)
            for stream, frame, *_ in ready:
                self.error(
                    stream, frame, "inference_failed", f"{model.ref}: {e}", "inference", model.name
                )
            self._judge(index, model, None, ready, [None] * len(ready), None)
            return
        t1 = time.monotonic()
        m = self._metrics
        m.inference_latency.labels(model.name).observe(t1 - t0)
        stage.labels(model.name, "session").observe(session_s)
        m.batch_size.labels(model.name).observe(len(ready))
        model.sizer.record(len(ready), t1 - t0)
        m.batch_limit.labels(model.name).set(model.sizer.best)
        qw = m.queue_wait.labels(model.name)
        payloads: list[dict[str, object] | None] = []
        post = stage.labels(model.name, "postprocess")
        for i, (stream, frame, decoded, _, ctx, t_dec, t_pre) in enumerate(ready):
            t_post = time.monotonic()
            threshold = model.spec.threshold if stream.threshold is None else stream.threshold
            try:
                if decoded is None:  # a raw input: the network's own outputs are its answer
                    payload: dict[str, Any] | None = None
                    done = time.monotonic()
                    timing = _timing(frame, taken, t0, t1, done)
                    row = {"outputs": codec.arrays([o[i] for o in outputs])}
                    text = codec.result(frame.seq, model.ref, 0, 0, row, timing)
                else:
                    payload = task.postprocess([o[i] for o in outputs], ctx, decoded, threshold)
                    done = time.monotonic()
                    timing = _timing(frame, taken, t0, t1, done)
                    # the encoder refuses NaN and infinities: a model that outputs them fails here
                    text = codec.result(
                        frame.seq, model.ref, decoded.width, decoded.height, payload, timing
                    )
                    post.observe(time.monotonic() - t_post)
                payloads.append(payload)
            except Exception as e:
                payloads.append(None)
                log.exception("session=%s seq=%d: postprocess failed", stream.id, frame.seq)
                self.error(stream, frame, "postprocess_failed", str(e), "postprocess", model.name)
                continue
            qw.observe(taken - frame.received_at)
            self._push(
                Reply(
                    stream, frame.seq, "result", text, "", frame.received_at, model.name, model.ref
                )
            )
            if self._tracer is not None:
                self._tracer.frame(
                    session=stream.id,
                    seq=frame.seq,
                    model=model.ref,
                    transport=stream.transport,
                    outcome="result",
                    received=frame.received_at,
                    end=done,
                    stages=[
                        ("queue", frame.received_at, taken),
                        ("decode", t_dec, t_pre),
                        ("inference", t0, t1),
                        ("postprocess", t1, done),
                    ],
                )
        shadow = self._repo.shadow_of(model.name)
        if shadow is not None and shadow is not model:
            if self._rng.random() < float(model.spec.shadow.get("sample", 0.1)):
                run_shadow(
                    self._metrics,
                    index,
                    model,
                    shadow,
                    batch,
                    ready,
                    payloads,
                    _thresholds(model, ready),
                )
        self._judge(index, model, batch, ready, payloads, cost_s)

    def _judge(
        self,
        index: int,
        model: LoadedModel,
        batch: np.ndarray | None,
        ready: list,
        payloads: list[dict[str, object] | None],
        cost_s: float | None,
    ) -> None:
        """Feed the canary trial this batch takes part in, if any (edge/models/canary/): the
        frames with an image (a raw input, KServe's NAME.raw, is not judged), and the batch
        run on the incumbent too when asked (`cost_s` is None when the batch failed)."""
        judged = [p for r, p in zip(ready, payloads, strict=True) if r[2] is not None]

        def rerun(incumbent: LoadedModel) -> tuple[float, list[float]]:
            assert batch is not None
            thresholds = _thresholds(model, ready)
            _, cost, agreements = second_opinion(
                incumbent, index, batch, ready, payloads, thresholds
            )
            return cost, agreements

        self._repo.canaries.judge(model, judged, cost_s, rerun)

    def error(
        self, stream: Stream, frame: Frame, code: str, message: str, stage: str, model: str = ""
    ) -> None:
        """Answer one frame with an error from `stage`."""
        text = codec.error(frame.seq, code, message)
        self._push(Reply(stream, frame.seq, "error", text, stage, frame.received_at, model))


def _thresholds(model: LoadedModel, ready: list) -> list[float]:
    """Each frame's score threshold: its stream's, or its model's."""
    return [model.spec.threshold if r[0].threshold is None else r[0].threshold for r in ready]


def _timing(frame: Frame, taken: float, t0: float, t1: float, done: float) -> Timing:
    return Timing(
        queue_ms=(taken - frame.received_at) * 1e3,
        inference_ms=(t1 - t0) * 1e3,
        total_ms=(done - frame.received_at) * 1e3,
    )
