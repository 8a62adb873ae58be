"""A loaded, warmed model version: its task plugin and its ONNX Runtime sessions.

A model in the repository is data, not code: the file is read as bytes, ONNX external data is
refused (edge/inference/onnxfile.py), symlinks are refused, and no custom-op library is ever
registered.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.frames import Image
from edge.inference import autoprovider, providers
from edge.inference.batching import BatchSizer
from edge.inference.modelspec import ModelSpec
from edge.inference.onnxfile import check_self_contained
from edge.inference.stages import Stage, make_stage
from edge.inference.tasks import get_task
from edge.inference.tasks.base import Task
from edge.inference.tasks.crops import RegionTask

log = logging.getLogger("edge.engine")


class ModelLoadError(RuntimeError):
    """A model version cannot be served; the message says why."""


@dataclass(frozen=True)
class Layout:
    """How a model's sessions are laid out over the worker threads, and why."""

    sessions: int
    threads: int
    reason: str
    #: a GPU: each session runs on a thread of its own (the workers hand it their batches),
    #: and always at one input shape (batches padded to max_batch)
    dedicated: bool = False

    @property
    def max_batches(self) -> int:
        """Batches of this model the workers may hold at once (0: no limit beyond them).

        On a GPU, two per session: one running, one being decoded or postprocessed. More
        would only split the ready streams into smaller (padded) batches, and put more
        threads in line for the GIL that host work in Python holds (docs/gpu.md)."""
        return 2 * self.sessions if self.dedicated else 0


def choose_layout(spec: ModelSpec, workers: int, gpu: bool = False) -> Layout:
    """How a model's sessions map onto the worker threads.

    `auto` (the default) gives every worker its own single-threaded session, so workers run
    frames (or batches) side by side and never oversubscribe the cores. bench/layout.py chose
    this on a 2-core box for both default models: BlazeFace 3,150 frames/s as 2 x 1 against
    1,060 as one 2-thread session; the PP-OCR text detector 41.6 against 29.3 (batch 1) and
    37.2 against 30.7 (batch 2). A large model on a many-core box with few streams may want
    the opposite (lower latency per frame): set `sessions = 1` and `threads = N` in model.toml.

    On a GPU (TensorRT or CUDA first) the device does the work: `auto` gives two sessions that
    the workers share, so one batch's copies and host work overlap another's kernels, without
    a memory arena and TensorRT engine per worker. Each runs on a thread of its own: ONNX
    Runtime's CUDA provider keeps its cuDNN handles per calling thread, so they are made once.
    Every batch runs at `max_batch` rows (a partial batch is padded): the CUDA provider
    re-tunes cuDNN whenever the input shape changes, which on an H100 cost the text detector
    0.6 s (heuristic search) to 1.3 s (exhaustive) per run against 3 to 4 ms at a steady shape
    (bench/gpu_check.py, docs/architecture.md).
    """
    if spec.sessions is not None or spec.threads is not None:
        s = spec.sessions or 1
        t = spec.threads or max(1, workers // s)
        return Layout(s, t, "set in model.toml", dedicated=gpu)
    if gpu:
        return Layout(
            min(workers, 2), 1, "auto on a GPU: two sessions the workers share", dedicated=True
        )
    return Layout(workers, 1, "auto: one single-threaded session per worker")


@dataclass
class LoadedModel:
    name: str
    version: str
    spec: ModelSpec
    task: Task
    sessions: list[ort.InferenceSession]
    input_name: str
    output_names: list[str]
    providers: list[str]
    layout: Layout
    input_shape: list[object] = field(default_factory=list)
    #: the input's ONNX type, e.g. `tensor(float)`
    input_type: str = ""
    #: one sample as the network takes it, without the batch axis: what preprocess makes
    sample_shape: tuple[int, ...] = ()
    sample_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    #: each output's name, ONNX type and shape (symbolic sizes as strings or None)
    outputs: list[tuple[str, str, list[object]]] = field(default_factory=list)
    #: the later stages (model.toml `[[stages]]`), run on crops of what the first found
    stages: list[Stage] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def __post_init__(self) -> None:
        # A multi-threaded session already uses every core: two callers at once only fight
        # over them (bench/layout.py), so its runs take turns while other workers prepare the
        # next batch. Single-threaded sessions run side by side.
        exclusive = self.layout.threads > 1 and not self.layout.dedicated
        self._locks = [threading.Lock() if exclusive else None for _ in self.sessions]
        # Runner threads live as long as this model version: `close` stops them at shutdown;
        # a retired version may still have a batch in a worker, so its runners are left to
        # exit when its last batch is done and the version is collected.
        self._runners = [
            ThreadPoolExecutor(1, thread_name_prefix=f"edge-{self.name}-session{i}")
            for i in range(len(self.sessions) if self.layout.dedicated else 0)
        ]
        # batches handed to each session thread and not yet back: a batch goes to the least
        # busy one, so workers whose numbers share a remainder do not queue on one session
        # while another idles
        self._pending = [0] * len(self._runners)
        self._pending_lock = threading.Lock()
        # on a GPU the batch shape is fixed, so there are no sizes to measure
        self.sizer = BatchSizer(
            self.spec.max_batch,
            measured=self.spec.batching == "measured" and not self.layout.dedicated,
            on_change=self._batch_limit_changed,
        )
        #: batch sizes the sessions see (warm-up runs each once)
        self.batch_shapes = (
            [self.spec.max_batch] if self.layout.dedicated else self.sizer.candidates
        )

    def _batch_limit_changed(self, before: int, after: int, costs: dict[int, float]) -> None:
        per_frame = ", ".join(f"{s}: {c * 1e3:.2f}" for s, c in sorted(costs.items()))
        log.info(
            "model %s: batch limit %d -> %d by measurement (inference ms per frame by batch "
            "size: %s)",
            self.ref,
            before,
            after,
            per_frame,
        )

    def close(self) -> None:
        """Stop the session threads (GPU layout); only once no worker runs this version."""
        for runner in self._runners:
            runner.shutdown(wait=True)

    def run(self, batch: np.ndarray, worker: int) -> Sequence[np.ndarray]:
        return self.run_timed(batch, worker)[0]

    @property
    def single_threaded_cpu(self) -> bool:
        """Its sessions run on the CPU provider with one thread, on the worker's own thread."""
        cpu = bool(self.providers) and self.providers[0] == "CPUExecutionProvider"
        return cpu and self.layout.threads == 1 and not self.layout.dedicated

    def run_costed(
        self, batch: np.ndarray, worker: int
    ) -> tuple[Sequence[np.ndarray], float, float]:
        """`run_timed`, plus what the run cost this version: on a single-threaded CPU session
        the worker thread's CPU time, which leaves out the waits for a core and for the
        interpreter lock that a busy machine adds to any run; elsewhere the seconds."""
        c0 = time.thread_time()
        outputs, seconds = self.run_timed(batch, worker)
        cpu = time.thread_time() - c0
        return outputs, seconds, cpu if self.single_threaded_cpu else seconds

    def run_timed(self, batch: np.ndarray, worker: int) -> tuple[Sequence[np.ndarray], float]:
        """Run `batch` for worker `worker`; the outputs, and the seconds the session call
        itself took (without the padding, the wait for a lock or the hand-off to a session
        thread)."""
        i = worker % len(self.sessions)
        if self._runners:
            n, rows = len(batch), self.spec.max_batch
            if n < rows:
                pad = np.zeros((rows - n, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, pad])
            k = len(self._runners)
            with self._pending_lock:  # ties go to the worker's own session (warm-up runs each)
                i = min(range(k), key=lambda j: (self._pending[j], (j - worker) % k))
                self._pending[i] += 1
            try:
                outputs, took = self._runners[i].submit(self._call, i, batch).result()
            finally:
                with self._pending_lock:
                    self._pending[i] -= 1
            return [o[:n] for o in outputs], took
        lock = self._locks[i]
        if lock is None:
            return self._call(i, batch)
        with lock:
            return self._call(i, batch)

    def _call(self, i: int, batch: np.ndarray) -> tuple[Sequence[np.ndarray], float]:
        t0 = time.perf_counter()
        outputs = self.sessions[i].run(self.output_names, {self.input_name: batch})
        return outputs, time.perf_counter() - t0

    def infer_image(self, image: Image, threshold: float | None = None) -> dict[str, object]:
        """One image through preprocess, run and postprocess (warm-up and tests)."""
        tensor, ctx = self.task.preprocess(image)
        outputs = self.run(tensor[None], 0)
        th = self.spec.threshold if threshold is None else threshold
        return self.task.postprocess([o[0] for o in outputs], ctx, image, th)


def load(
    repo_root: Path,
    spec: ModelSpec,
    version_dir: Path,
    *,
    workers: int,
    preference: tuple[str, ...],
    trt_cache: Path | None = None,
    trt_fp16: bool = True,
    trt_workspace_mb: int = 1024,
) -> LoadedModel:
    """Load, check and warm one version; raise ModelLoadError with the reason on failure."""
    path = version_dir / "model.onnx"
    data, task = _read(repo_root, path, spec)
    prefs = spec.providers or preference
    auto = ""
    if prefs == ("auto",):
        prefs, auto = _auto(data, spec, task, path, trt_cache, trt_fp16, trt_workspace_mb)
    layout = choose_layout(spec, workers, gpu=providers.gpu_first(prefs))
    chosen, why = providers.choose(
        prefs,
        model_path=path,
        threads=layout.threads,
        trt_cache=trt_cache,
        trt_fp16=trt_fp16,
        trt_workspace_mb=trt_workspace_mb,
    )
    sessions = []
    for _ in range(layout.sessions):
        sessions.append(_session(data, chosen, layout.threads, path))
    used = sessions[0].get_providers()
    why = f"{auto}; {why}" if auto else why
    log.info(
        "model %s@%s: providers %s (%s); %d session(s) x %d thread(s) (%s)",
        spec.name,
        version_dir.name,
        used,
        why,
        layout.sessions,
        layout.threads,
        layout.reason,
    )
    inp = sessions[0].get_inputs()[0]
    sample = _blank_tensor(spec, task)
    model = LoadedModel(
        name=spec.name,
        version=version_dir.name,
        spec=spec,
        task=task,
        sessions=sessions,
        input_name=inp.name,
        output_names=[o.name for o in sessions[0].get_outputs()],
        providers=used,
        layout=layout,
        input_shape=list(inp.shape),
        input_type=inp.type,
        sample_shape=tuple(sample.shape),
        sample_dtype=sample.dtype,
        outputs=[(o.name, o.type, list(o.shape)) for o in sessions[0].get_outputs()],
        stages=_load_stages(repo_root, spec, version_dir, chosen, layout),
    )
    warm_up(model)
    return model


def _read(repo_root: Path, path: Path, spec: ModelSpec) -> tuple[bytes, Task]:
    """A network's bytes, checked, and its task built from `spec`."""
    _check_inside(repo_root, path)
    try:
        data = path.read_bytes()
        check_self_contained(data)
        return data, get_task(spec.task)(spec)
    except (OSError, ValueError) as e:  # ExternalData is a ValueError
        raise ModelLoadError(f"{path}: {e}") from e


def _load_stages(
    repo_root: Path,
    spec: ModelSpec,
    version_dir: Path,
    chosen: list[tuple[str, dict[str, object]]],
    layout: Layout,
) -> list[Stage]:
    """The later stages, each with as many sessions as the first, on the same providers."""
    stages = []
    for stage in spec.stages:
        path = version_dir / stage.file
        data, task = _read(repo_root, path, stage.spec)
        if not isinstance(task, RegionTask):
            raise ModelLoadError(f"{path}: task {stage.spec.task!r} does not take regions' crops")
        try:
            session = functools.partial(_session, data, chosen, layout.threads, path)
            made = make_stage(stage.file, task, session, layout.sessions)
        except ValueError as e:
            raise ModelLoadError(f"{path}: {e}") from e
        stages.append(made)
    return stages


def _session(
    data: bytes, chosen: list[tuple[str, dict[str, object]]], threads: int, path: Path
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    while True:
        try:
            return ort.InferenceSession(
                data,
                sess_options=opts,
                providers=[n for n, _ in chosen],
                provider_options=[o for _, o in chosen],
            )
        except Exception as e:  # onnxruntime raises its own exception types
            if len(chosen) > 1:
                log.warning(
                    "%s: provider %s failed to load (%s); falling back to %s",
                    path,
                    chosen[0][0],
                    e,
                    chosen[1][0],
                )
                chosen = chosen[1:]
                continue
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {e}") from e


def _auto(
    data: bytes,
    spec: ModelSpec,
    task: Task,
    path: Path,
    trt_cache: Path | None,
    trt_fp16: bool,
    trt_workspace_mb: int,
) -> tuple[tuple[str, ...], str]:
    """`providers = auto`: the preference measured fastest here (edge/inference/autoprovider.py)."""

    def make(short: str, threads: int) -> Callable[[np.ndarray], object]:
        chosen, _ = providers.choose(
            (short,),
            model_path=path,
            threads=threads,
            trt_cache=trt_cache,
            trt_fp16=trt_fp16,
            trt_workspace_mb=trt_workspace_mb,
        )
        session = _session(data, chosen[:1], threads, path)
        if session.get_providers()[0] != chosen[0][0]:
            raise ModelLoadError(f"{short} did not start")
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})

    return autoprovider.choose(_blank_tensor(spec, task), spec.max_batch, make)


def _blank_tensor(spec: ModelSpec, task: Task) -> np.ndarray:
    blank = Image(
        pixels=np.full((spec.input_height, spec.input_width, 3), 127, np.uint8),
        width=spec.input_width,
        height=spec.input_height,
    )
    tensor, _ = task.preprocess(blank)
    return tensor


def warm_up(model: LoadedModel) -> None:
    """Run every session once on a blank frame at each batch size the batcher may try, so no
    client frame is the slow first one (a GPU picks its kernels per input shape)."""
    tensor = _blank_tensor(model.spec, model.task)
    t0 = time.monotonic()
    try:
        for i in range(len(model.sessions)):
            for size in model.batch_shapes:
                model.run(np.stack([tensor] * size), i)
        for stage in model.stages:
            stage.warm_up()
    except Exception as e:
        raise ModelLoadError(f"{model.ref}: warm-up inference failed: {e}") from e
    log.info("model %s warmed up in %.0f ms", model.ref, (time.monotonic() - t0) * 1e3)


def _check_inside(root: Path, path: Path) -> None:
    root = root.resolve()
    for p in (path, path.parent, path.parent.parent):
        if p.is_symlink():
            raise ModelLoadError(f"{p}: symlinks are refused in the model repository")
    if root not in path.resolve().parents:
        raise ModelLoadError(f"{path}: outside the model repository {root}")
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing; run `edge models pull`")
