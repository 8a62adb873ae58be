"""On a worker thread: one batch of frames from bytes to encoded replies.

`Pipeline.serve` reads as its stages, each a function: prepare the frames (decode, told the
smallest size the model needs, and preprocess), run the batch (one session run), answer each
frame (postprocess, a typed `Result` encoded once by its stream's wire, metrics and spans),
sample the shadow, feed the canary trial (a canary's batch runs on the version it would
replace too). Each frame in flight is an `InFlight` record. Every frame taken ends in exactly
one reply, a result or a typed error naming the stage that failed; no exception leaves a
frame unanswered. Replies go to `push`, which hands them to the event loop
(edge/core/scheduler.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from edge import codec
from edge.core import tracks
from edge.core.stream import Stream
from edge.frames import (
    Answer,
    Error,
    Frame,
    FrameError,
    Image,
    Picture,
    RawInput,
    Result,
    Timing,
)
from edge.inference.decode import decode
from edge.inference.engine import LoadedModel
from edge.inference.stages import OnBatch, Stage, run_stages
from edge.metrics import Metrics
from edge.models.repository import Repository
from edge.models.shadow import run_shadow, second_opinion
from edge.tracing import FrameTracer

log = logging.getLogger("edge.pipeline")


@dataclass(slots=True)
class Reply:
    """A worker's answer to one frame, handed to the event loop: the typed answer and, for
    results and errors, its encoding for the stream's wire (made on the worker)."""

    stream: Stream
    answer: Answer
    message: Any = None
    received_at: float = 0.0
    model: str = ""  # the model's name, a metrics label
    text: str | None = None  # a result's JSON for the stream's sinks, when it publishes


@dataclass(slots=True)
class InFlight:
    """One frame of a batch, from its decode to its answer."""

    stream: Stream
    frame: Frame
    image: Image | None  # None: a raw input (KServe's NAME.raw), already the network's input
    tensor: np.ndarray  # the network's input for this frame, without the batch axis
    context: Any  # what preprocess noted for postprocess (None for a raw input)
    decoding: float  # when its decode began (time.monotonic())
    prepared: float  # when its tensor was ready


@dataclass(slots=True)
class Found:
    """A frame's answer between its postprocessing and its result: the payload (None for a
    raw input, whose answer is the network's `outputs`) and the seconds spent on it so far."""

    payload: dict[str, Any] | None
    spent: float
    outputs: tuple[np.ndarray, ...] = ()


@dataclass(slots=True)
class BatchRun:
    """A batch's one session run: its input, the outputs, the clocks, what it cost
    (`LoadedModel.run_costed`)."""

    batch: np.ndarray
    outputs: Sequence[np.ndarray]
    taken: float  # when the worker took the frames
    started: float
    ended: float
    cost_s: float


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
        self._repo, self._metrics, self._push, self._tracer = repo, metrics, push, tracer
        #: what decode accepts of a frame: pixels, and pixels of a PNG (None: the same)
        self._limits = (max_pixels, max_png_pixels)
        self._rng = random.Random()

    def serve(self, index: int, model: LoadedModel, jobs: list[tuple[Stream, Frame]]) -> None:
        """Answer every frame of `jobs` (claimed by worker `index`): a result or an error."""
        taken = time.monotonic()
        ready = self._prepare(model, jobs)
        if not ready:
            return
        run = self._run(index, model, ready, taken)
        if run is None:  # every frame was answered inference_failed
            self._judge(index, model, None, ready, [None] * len(ready), None)
            return
        payloads, stages_s = self._answer_all(index, model, ready, run)
        # the batch's cost per frame, its later stages' included: frames batched together
        # have their crops batched together too (edge/inference/stages.py)
        model.sizer.record(len(ready), run.ended - run.started + stages_s)
        self._metrics.batch_limit.labels(model.name).set(model.sizer.best)
        self._sample_shadow(index, model, run.batch, ready, payloads)
        self._judge(index, model, run.batch, ready, payloads, run.cost_s)

    def _prepare(self, model: LoadedModel, jobs: list[tuple[Stream, Frame]]) -> list[InFlight]:
        """Each frame as the network's input: decoded (told the smallest size the model
        needs) and preprocessed, or a raw input checked; a frame that fails is answered."""
        stage = self._metrics.stage_latency
        decoding = stage.labels(model.name, "decode")
        preprocessing = stage.labels(model.name, "preprocess")
        ready: list[InFlight] = []
        for stream, frame in jobs:
            t_dec = time.monotonic()
            data = frame.data
            if isinstance(data, RawInput):
                if data.array.shape != model.sample_shape or data.array.dtype != model.sample_dtype:
                    msg = f"{model.ref} takes {list(model.sample_shape)}"
                    self.error(stream, frame, "bad_frame", msg, "decode", model.name)
                    continue
                ready.append(InFlight(stream, frame, None, data.array, None, t_dec, t_dec))
                continue
            image = self._decode(model, stream, frame, data)
            if image is None:
                continue
            t_decoded = time.monotonic()
            try:
                tensor, ctx = model.task.preprocess(image)
            except Exception as e:
                log.exception("session=%s seq=%d: preprocess failed", stream.id, frame.seq)
                self.error(stream, frame, "preprocess_failed", str(e), "preprocess", model.name)
                continue
            t_pre = time.monotonic()
            decoding.observe(t_decoded - t_dec)
            preprocessing.observe(t_pre - t_decoded)
            ready.append(InFlight(stream, frame, image, tensor, ctx, t_dec, t_pre))
        return ready

    def _decode(
        self, model: LoadedModel, stream: Stream, frame: Frame, data: bytes | Picture
    ) -> Image | None:
        """The frame's pixels, or None when it was answered bad_frame."""
        try:
            return decode(data, model.task.decode_hint(), *self._limits)
        except FrameError as e:
            self.error(stream, frame, e.code, e.message, "decode", model.name)
        except Exception as e:  # a decoder bug: this frame is bad, the worker goes on
            log.exception("session=%s seq=%d: decode failed", stream.id, frame.seq)
            self.error(stream, frame, "bad_frame", str(e), "decode", model.name)
        return None

    def _run(
        self, index: int, model: LoadedModel, ready: list[InFlight], taken: float
    ) -> BatchRun | None:
        """One session run for the whole batch; None when it failed (every frame answered)."""
        t0 = time.monotonic()
        try:
            batch = np.stack([f.tensor for f in ready]) if len(ready) > 1 else ready[0].tensor[None]
            outputs, session_s, cost_s = model.run_costed(batch, index)
        except Exception as e:
            log.error("model %s: inference failed on a batch of %d: %s", model.ref, len(ready), e)
            for f in ready:
                message = f"{model.ref}: {e}"
                self.error(f.stream, f.frame, "inference_failed", message, "inference", model.name)
            return None
        t1 = time.monotonic()
        m = self._metrics
        m.inference_latency.labels(model.name).observe(t1 - t0)
        m.stage_latency.labels(model.name, "session").observe(session_s)
        m.batch_size.labels(model.name).observe(len(ready))
        return BatchRun(batch, outputs, taken, t0, t1, cost_s)

    def _answer_all(
        self, index: int, model: LoadedModel, ready: list[InFlight], run: BatchRun
    ) -> tuple[list[dict[str, Any] | None], float]:
        """Answer each frame of the batch: its outputs postprocessed, the model's later stages
        run on what all of them found at once, then its result sent. Their payloads (None: a
        raw input, or a failure) and the seconds the later stages took."""
        found = [
            self._postprocess(model, f, [o[i] for o in run.outputs]) for i, f in enumerate(ready)
        ]
        stages_s = self._later_stages(index, model, ready, found) if model.stages else 0.0
        post = self._metrics.stage_latency.labels(model.name, "postprocess")
        waited = self._metrics.queue_wait.labels(model.name)
        payloads: list[dict[str, Any] | None] = []
        for f, got in zip(ready, found, strict=True):
            t_finish = time.monotonic()
            done = None if got is None else self._finish(model, f, got, run)
            if got is None or done is None:
                payloads.append(None)
                continue
            if f.image is not None:
                post.observe(got.spent + time.monotonic() - t_finish)
            waited.observe(run.taken - f.frame.received_at)
            self._trace(model, f, run, done)
            payloads.append(got.payload)
        return payloads, stages_s

    def _postprocess(self, model: LoadedModel, f: InFlight, rows: list[np.ndarray]) -> Found | None:
        """The first stage's answer for one frame from its outputs `rows`; None when it failed
        (answered postprocess_failed)."""
        if f.image is None:  # a raw input: the network's own outputs are its answer
            return Found(None, 0.0, tuple(rows))
        t0 = time.monotonic()
        try:
            threshold = model.spec.threshold if f.stream.threshold is None else f.stream.threshold
            payload = model.task.postprocess(
                rows, f.context, f.image, tracks.floor(model, threshold)
            )
        except Exception as e:
            self._failed(model, f, e)
            return None
        return Found(payload, time.monotonic() - t0)

    def _later_stages(
        self, index: int, model: LoadedModel, ready: list[InFlight], found: list[Found | None]
    ) -> float:
        """Run the model's later stages on the regions of every frame of the batch at once
        (on worker `index`'s sessions); a frame they fail on is answered postprocess_failed.
        The seconds they took, each frame charged an equal share."""
        todo = [i for i, got in enumerate(found) if got is not None and ready[i].image is not None]
        if not todo:
            return 0.0
        frames = [(cast(Image, ready[i].image), cast(Found, found[i]).payload or {}) for i in todo]
        t0 = time.monotonic()
        try:
            staged = run_stages(
                model.stages, model.spec, model.task.rows, frames, index, self._stage_batch(model)
            )
        except Exception as e:  # one frame, which the stages failed on
            staged = [e] * len(todo)
        spent = time.monotonic() - t0
        for i, out in zip(todo, staged, strict=True):
            got = cast(Found, found[i])
            if isinstance(out, Exception):
                self._failed(model, ready[i], out)
                found[i] = None
            else:
                got.payload, got.spent = out, got.spent + spent / len(todo)
        return spent

    def _finish(self, model: LoadedModel, f: InFlight, got: Found, run: BatchRun) -> float | None:
        """Track a frame's detections, encode its result for its stream's wire and hand it
        on: when it was done; None when that failed (answered postprocess_failed)."""
        stream, frame, image, payload = f.stream, f.frame, f.image, got.payload
        try:
            if image is None or payload is None:
                done = time.monotonic()
                timing = _timing(frame, run, done)
                result = Result(frame.seq, model.ref, 0, 0, timing, outputs=got.outputs)
            else:
                threshold = model.spec.threshold if stream.threshold is None else stream.threshold
                tracks.follow(self._metrics, stream, model, payload, threshold, frame.seq)
                done = time.monotonic()
                timing = _timing(frame, run, done)
                result = Result(frame.seq, model.ref, image.width, image.height, timing, payload)
            # the JSON encoder refuses NaN and infinities: a model that outputs them fails here
            message = stream.outbox.wire.result(result)
            text = _for_sinks(stream, result, message)
        except Exception as e:
            self._failed(model, f, e)
            return None
        self._push(Reply(stream, result, message, frame.received_at, model.name, text))
        return done

    def _failed(self, model: LoadedModel, f: InFlight, e: Exception) -> None:
        """Answer a frame whose postprocessing (later stages, tracking, encoding) failed."""
        log.error("session=%s seq=%d: postprocess failed", f.stream.id, f.frame.seq, exc_info=e)
        self.error(f.stream, f.frame, "postprocess_failed", str(e), "postprocess", model.name)

    def _stage_batch(self, model: LoadedModel) -> OnBatch:
        """What observes the runs of `model`'s later stages, labelled by task: the crops each
        carried, and the frames (of different streams) they came from."""
        crops, frames = self._metrics.stage_batch_size, self._metrics.stage_batch_frames

        def observe(stage: Stage, n: int, sources: int) -> None:
            crops.labels(model.name, stage.task.name).observe(n)
            frames.labels(model.name, stage.task.name).observe(sources)

        return observe

    def _trace(self, model: LoadedModel, f: InFlight, run: BatchRun, done: float) -> None:
        if self._tracer is None:
            return
        frame = f.frame
        self._tracer.frame(
            session=f.stream.id,
            seq=frame.seq,
            model=model.ref,
            transport=f.stream.transport,
            outcome="result",
            received=frame.received_at,
            end=done,
            stages=[
                ("queue", frame.received_at, run.taken),
                ("decode", f.decoding, f.prepared),
                ("inference", run.started, run.ended),
                ("postprocess", run.ended, done),
            ],
        )

    def _sample_shadow(
        self,
        index: int,
        model: LoadedModel,
        batch: np.ndarray,
        ready: list[InFlight],
        payloads: list[dict[str, Any] | None],
    ) -> None:
        """Run a sample of the batches on the model's shadow version too, if it has one."""
        shadow = self._repo.shadow_of(model.name)
        if shadow is None or shadow is model:
            return
        if self._rng.random() < float(model.spec.shadow.get("sample", 0.1)):
            thresholds = _thresholds(model, ready)
            run_shadow(self._metrics, index, model, shadow, batch, ready, payloads, thresholds)

    def _judge(
        self,
        index: int,
        model: LoadedModel,
        batch: np.ndarray | None,
        ready: list[InFlight],
        payloads: list[dict[str, Any] | None],
        cost_s: float | None,
    ) -> None:
        """Feed the canary trial this batch takes part in, if any (edge/models/canary/): the
        frames with an image (a raw input, KServe's NAME.raw, is not judged), and the batch
        run on the incumbent too when asked (`cost_s` is None when the batch failed)."""
        judged = [(f, p) for f, p in zip(ready, payloads, strict=True) if f.image is not None]

        def rerun(incumbent: LoadedModel) -> tuple[float, list[float]]:
            assert batch is not None
            thresholds = _thresholds(model, ready)
            # a stream that set its own threshold is left out of the comparison (it could
            # choose one at which both versions find nothing), as are frames neither finds
            # anything in
            compared = [
                None if f.stream.threshold is not None else p
                for f, p in zip(ready, payloads, strict=True)
            ]
            _, cost, agreements = second_opinion(
                incumbent, index, batch, ready, compared, thresholds, count_blank=False
            )
            return cost, agreements

        sources = [(f.stream.id, f.stream.client) for f, _ in judged]
        self._repo.canaries.judge(model, [p for _, p in judged], cost_s, rerun, sources)

    def error(
        self, stream: Stream, frame: Frame, code: str, message: str, stage: str, model: str = ""
    ) -> None:
        """Answer one frame with an error from `stage`."""
        error = Error(frame.seq, code, message, stage)
        encoded = stream.outbox.wire.error(error)
        self._push(Reply(stream, error, encoded, frame.received_at, model))


def _for_sinks(stream: Stream, result: Result, message: object) -> str | None:
    """The result's JSON for the stream's sinks (docs/sinks.md), made here on the worker
    when the stream publishes: its wire's own message when that is codec's JSON."""
    if stream.outbox.tap is None or not stream.publish:
        return None
    if isinstance(stream.outbox.wire, codec.JsonWire) and isinstance(message, str):
        return message
    return codec.result(result)


def _thresholds(model: LoadedModel, ready: list[InFlight]) -> list[float]:
    """Each frame's score threshold: its stream's, or its model's."""
    return [
        model.spec.threshold if f.stream.threshold is None else f.stream.threshold for f in ready
    ]


def _timing(frame: Frame, run: BatchRun, done: float) -> Timing:
    return Timing(
        queue_ms=(run.taken - frame.received_at) * 1e3,
        inference_ms=(run.ended - run.started) * 1e3,
        total_ms=(done - frame.received_at) * 1e3,
    )
