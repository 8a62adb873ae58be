"""From the latest-frame slots to results, on worker threads.

Each stream has a one-slot mailbox (`Stream.slot`) holding its newest frame; a newer frame
replaces it and the old one is reported `stale`. Streams with a frame waiting sit once each in
a round-robin ready queue, so a fast sender cannot starve the others, and a stream has at most
one frame in flight, so its results come back in seq order.

A fixed pool of worker threads takes streams off the ready queue and hands their frames to the
pipeline (edge/core/pipeline.py: decode, preprocess, inference, postprocess, encoding for the
stream's wire), all off the event loop (the heavy parts release the GIL). For a batching model
a worker gathers up to the batch limit (edge/inference/batching.py) of that model's streams for
at most `max_delay_ms`, then takes their frames: staleness and deadlines are decided at that
instant, just before the batch runs.
Replies go back to the loop through one deque with a single wake-up per burst.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from edge.core import tracks
from edge.core.pipeline import Pipeline, Reply
from edge.core.stream import Stream
from edge.frames import Dropped, Frame, Result
from edge.inference.engine import LoadedModel
from edge.metrics import Metrics
from edge.models.repository import Repository, UnknownModel
from edge.tracing import FrameTracer

log = logging.getLogger("edge.scheduler")


class Scheduler:
    def __init__(
        self,
        repo: Repository,
        metrics: Metrics,
        *,
        workers: int,
        max_pixels: int,
        max_png_pixels: int | None = None,
        inflight_limit: int = 0,
        tracer: FrameTracer | None = None,
    ) -> None:
        self._repo = repo
        self._metrics = metrics
        self._workers = workers
        #: frames one model may have running at once (0: no limit beyond the workers), so one
        #: busy model cannot take every worker from the others
        self._inflight_limit = inflight_limit
        self._running: dict[str, int] = {}
        self._batches: dict[str, int] = {}  # batches each model has in the workers
        self._pipeline = Pipeline(
            repo,
            metrics,
            self._push,
            max_pixels=max_pixels,
            max_png_pixels=max_png_pixels,
            tracer=tracer,
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: deque[Stream] = deque()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._replies: deque[Reply] = deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i in range(self._workers):
            t = threading.Thread(target=self._work, args=(i,), name=f"edge-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    async def stop(self) -> None:
        """Stop the workers after the frames they hold are answered; idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        threads, self._threads = self._threads, []
        await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
        self._deliver()

    # -- event loop side --------------------------------------------------------------------
    def offer(self, stream: Stream, frame: Frame) -> Frame | None:
        """Put `frame` in the stream's slot; return the frame it superseded, if any."""
        with self._lock:
            old = stream.slot
            stream.slot = frame
            if not stream.busy and not stream.queued and not stream.closed:
                stream.queued = True
                self._ready.append(stream)
                self._cond.notify()
        return old

    def withdraw(self, stream: Stream) -> Frame | None:
        """Close the stream to new work; return the frame still waiting in its slot."""
        with self._lock:
            stream.closed = True
            if not stream.busy:  # else the worker ends its tracks when it lets it go
                tracks.end(self._metrics, stream)
            frame, stream.slot = stream.slot, None
            if stream.queued:
                stream.queued = False
                self._ready.remove(stream)
        return frame

    def is_idle(self, stream: Stream) -> bool:
        with self._lock:
            return stream.idle

    # -- worker threads ---------------------------------------------------------------------
    def _work(self, index: int) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            model, jobs = batch
            try:
                self._pipeline.serve(index, model, jobs)
            except Exception:  # a bug must cost this batch, never the worker thread
                log.exception("worker %d: serving a batch of %s failed", index, model.ref)
            finally:
                with self._lock:
                    self._running[model.name] -= len(jobs)
                    # with the count it mirrors, so the gauge never reads more than the limit
                    self._metrics.inflight.labels(model.name).dec(len(jobs))
                    self._batches[model.name] -= 1
                    if self._inflight_limit or model.layout.max_batches:
                        self._cond.notify()
                    for stream, _ in jobs:
                        stream.busy = False
                        if stream.closed:
                            tracks.end(self._metrics, stream)
                        if stream.slot is not None and not stream.closed:
                            stream.queued = True
                            self._ready.append(stream)
                            self._cond.notify()
            # Waiting for work, a worker pins nothing of its last batch: a stream keeps its
            # session alive, a WebRTC session its peer connection and decoded frames. (`jobs`
            # is never empty, so the loop above bound `stream` and `_`.)
            del batch, model, jobs, stream, _

    def _gather(self) -> tuple[LoadedModel, list[tuple[Stream, Frame]]] | None:
        """Wait for work; claim up to max_batch streams of one model; take their frames."""
        with self._cond:
            while True:
                picked = self._pick()
                if picked is None:
                    if self._stopping and not self._ready:
                        return None
                    self._cond.wait()
                    continue
                first, model = picked
                first.busy = True
                # counted from the claim, so workers gathering at once respect the limit too
                self._batches[model.name] = self._batches.get(model.name, 0) + 1
                claimed = [first]
                limit = model.sizer.limit()
                if limit > 1:
                    deadline = time.monotonic() + model.spec.max_delay_ms / 1000
                    while True:
                        self._claim_more(model, claimed, limit)
                        remaining = deadline - time.monotonic()
                        if len(claimed) >= limit or remaining <= 0 or self._stopping:
                            break
                        self._cond.wait(remaining)
                jobs = []
                now = time.monotonic()
                for s in claimed:
                    frame, s.slot = s.slot, None
                    if frame is None:  # withdrawn while we gathered
                        s.busy = False
                        tracks.end(self._metrics, s)
                        continue
                    if s.max_age_s is not None and now - frame.received_at > s.max_age_s:
                        s.busy = False
                        late = Dropped((frame.seq,), "deadline")
                        self._push(Reply(s, late, model=model.name))
                        continue
                    jobs.append((s, frame))
                if jobs:
                    self._running[model.name] = self._running.get(model.name, 0) + len(jobs)
                    self._metrics.inflight.labels(model.name).inc(len(jobs))
                    return model, jobs
                self._batches[model.name] -= 1  # every frame went: the claim is void
                self._cond.notify()

    def _pick(self) -> tuple[Stream, LoadedModel] | None:
        """The first ready stream, round-robin, whose model is under its in-flight limits."""
        for _ in range(len(self._ready)):
            s = self._ready.popleft()
            try:
                model = self._repo.resolve(s.route)
            except UnknownModel as e:
                s.queued = False
                frame, s.slot = s.slot, None
                if frame is not None:
                    self._pipeline.error(s, frame, "model_unavailable", str(e), "inference")
                continue
            if (
                self._inflight_limit and self._running.get(model.name, 0) >= self._inflight_limit
            ) or (
                model.layout.max_batches
                and self._batches.get(model.name, 0) >= model.layout.max_batches
            ):
                self._ready.append(s)  # its model is at a limit: let other models go first
                continue
            s.queued = False
            return s, model
        return None

    def _claim_more(self, model: LoadedModel, claimed: list[Stream], limit: int) -> None:
        for s in list(self._ready):
            if len(claimed) >= limit:
                return
            try:
                if self._repo.resolve(s.route) is not model:
                    continue
            except UnknownModel:
                continue
            self._ready.remove(s)
            s.queued = False
            s.busy = True
            claimed.append(s)

    # -- back to the event loop -------------------------------------------------------------
    def _push(self, reply: Reply) -> None:
        self._replies.append(reply)
        if not self._wake_pending:
            self._wake_pending = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # loop closed under us during shutdown
                    pass

    def _deliver(self) -> None:
        self._wake_pending = False
        replies = self._replies
        m = self._metrics
        while replies:
            r = replies.popleft()
            s, answer = r.stream, r.answer
            t = s.transport
            if isinstance(answer, Result):
                s.stats.processed += 1
                m.processed.labels(t, r.model).inc()
                s.outbox.result(answer, r.message, r.received_at, r.text)
            elif isinstance(answer, Dropped):
                for seq in answer.seqs:
                    s.stats.dropped += 1
                    m.dropped.labels(t, r.model, answer.reason).inc()
                    s.outbox.drop(seq, answer.reason)
            else:
                s.stats.errors += 1
                m.errors.labels(t, answer.stage).inc()
                s.outbox.put(r.message, r.received_at)
