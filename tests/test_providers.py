"""Execution provider choice. The GPU providers cannot exist on this machine, so these tests
fake what onnxruntime reports as installed; the CPU path runs for real everywhere else."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge.inference import engine, providers
from edge.inference.modelspec import ModelSpec
from edge.models import versions
from edge.settings import Settings

pytestmark = pytest.mark.unit

JETSON = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_jetson_prefers_tensorrt_then_cuda_then_cpu(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On a Jetson the order is TensorRT, CUDA, CPU, with FP16, workspace and an engine cache
    keyed by model content and runtime versions."""
    monkeypatch.setattr(providers, "available", lambda: JETSON)
    monkeypatch.setattr(providers, "tensorrt_runtime", lambda: True)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model-a")
    chosen, why = providers.choose(
        ("tensorrt", "cuda", "cpu"),
        model_path=model,
        threads=1,
        trt_cache=tmp_path / "trt",
        trt_fp16=True,
        trt_workspace_mb=512,
    )
    assert [n for n, _ in chosen] == JETSON
    opts = chosen[0][1]
    assert opts["trt_fp16_enable"] is True and opts["trt_max_workspace_size"] == 512 << 20
    assert opts["trt_engine_cache_enable"] is True
    cache = Path(opts["trt_engine_cache_path"])
    assert cache.is_dir() and ort.__version__ in str(cache) and "trt-" in str(cache)
    assert "TensorrtExecutionProvider" in why


def test_engine_cache_changes_with_the_model_only(tmp_path: Path) -> None:
    """An OTA model update must not reuse a stale engine; an unchanged model must not rebuild."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(b"weights v1")
    b.write_bytes(b"weights v1")
    assert providers.engine_cache_dir(tmp_path, a) == providers.engine_cache_dir(tmp_path, b)
    b.write_bytes(b"weights v2")
    assert providers.engine_cache_dir(tmp_path, a) != providers.engine_cache_dir(tmp_path, b)


def test_arm_board_gets_cpu_and_says_why(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(providers, "available", lambda: ["CPUExecutionProvider"])
    chosen, why = providers.choose(
        ("tensorrt", "cuda", "cpu"),
        model_path=tmp_path / "m",
        threads=2,
        trt_cache=None,
        trt_fp16=True,
        trt_workspace_mb=1,
    )
    assert [n for n, _ in chosen] == ["CPUExecutionProvider"]
    assert "not installed here: ['tensorrt', 'cuda']" in why


def test_xnnpack_where_the_build_has_it(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        providers, "available", lambda: ["XnnpackExecutionProvider", "CPUExecutionProvider"]
    )
    chosen, _ = providers.choose(
        ("xnnpack", "cpu"),
        model_path=tmp_path / "m",
        threads=3,
        trt_cache=None,
        trt_fp16=True,
        trt_workspace_mb=1,
    )
    assert chosen == [
        ("XnnpackExecutionProvider", {"intra_op_num_threads": 3}),
        ("CPUExecutionProvider", {}),
    ]


def test_a_provider_that_fails_at_load_falls_back(monkeypatch, pulled: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A GPU provider that fails to initialise must not take the model down: the next provider
    is used and the log says so."""
    real = ort.InferenceSession

    def session(data, sess_options=None, providers=None, provider_options=None):  # type: ignore[no-untyped-def]
        if providers and providers[0] != "CPUExecutionProvider":
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(
            data, sess_options=sess_options, providers=providers, provider_options=provider_options
        )

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(providers, "available", lambda: JETSON)
    monkeypatch.setattr(providers, "tensorrt_runtime", lambda: True)
    from edge.inference.modelspec import ModelSpec

    spec = ModelSpec.load(pulled / "blazeface")
    with caplog.at_level(logging.WARNING, logger="edge.engine"):
        model = engine.load(
            pulled,
            spec,
            pulled / "blazeface" / "1",
            workers=1,
            preference=("tensorrt", "cuda", "cpu"),
        )
    assert model.providers == ["CPUExecutionProvider"]
    text = caplog.text
    assert "TensorrtExecutionProvider failed to load" in text
    assert "CUDAExecutionProvider failed to load" in text


def test_first_tensorrt_build_is_visible_while_loading(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Readiness must say an engine is being built rather than look stuck."""
    monkeypatch.setattr(providers, "available", lambda: JETSON)
    monkeypatch.setattr(providers, "tensorrt_runtime", lambda: True)
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(b"x")
    settings = Settings(models=tmp_path, trt_cache=tmp_path / "trt")
    spec = type("S", (), {"providers": ()})()
    reason = versions.loading_reason(settings, spec, vdir)  # type: ignore[arg-type]
    assert "building a TensorRT engine" in reason
    cache = providers.engine_cache_dir(tmp_path / "trt", vdir / "model.onnx")
    cache.mkdir(parents=True)
    (cache / "TensorrtExecutionProvider_abc.engine").write_bytes(b"e")
    assert "cached" in versions.loading_reason(settings, spec, vdir)  # type: ignore[arg-type]


def test_tensorrt_without_libnvinfer_is_skipped_with_a_reason(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """onnxruntime-gpu lists TensorRT even where libnvinfer is missing (an H100 box without
    TensorRT did): the gateway asks for CUDA directly and says why."""
    monkeypatch.setattr(providers, "available", lambda: JETSON)
    monkeypatch.setattr(providers, "tensorrt_runtime", lambda: False)
    chosen, why = providers.choose(
        ("tensorrt", "cuda", "cpu"),
        model_path=tmp_path / "m",
        threads=1,
        trt_cache=tmp_path / "trt",
        trt_fp16=True,
        trt_workspace_mb=1,
    )
    assert [n for n, _ in chosen] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "libnvinfer" in why and "not installed here: ['tensorrt']" in why
    assert providers.gpu_first(("tensorrt", "cuda", "cpu"))
    assert not (tmp_path / "trt").exists()  # no engine cache for a provider that cannot start


# -- providers = auto, and the process count -------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize(
    ("cpu_ms", "gpu_batch_ms", "chosen"),
    [
        (3.6, 1.8, "cpu"),  # a light model: 16 cores beat the GPU (the H200 box's BlazeFace)
        (50.0, 3.0, "cuda"),  # a heavy one: the GPU wins by far (the text detector)
        (4.0, 1.1, "cpu"),  # near a tie the CPU keeps it (the GPU must win by 10%)
    ],
)
def test_auto_keeps_the_provider_that_serves_more_frames(
    monkeypatch: pytest.MonkeyPatch, cpu_ms: float, gpu_batch_ms: float, chosen: str
) -> None:
    """Guards against `auto` comparing one call's latency (a GPU always wins that) instead of
    what the machine serves: every core's single-threaded session against the GPU's batch.
    The GPU cannot exist here, so the timings are given."""
    from edge.inference import autoprovider

    monkeypatch.setattr(providers, "auto_candidates", lambda: ["cuda", "cpu"])
    made: list[tuple[str, int]] = []

    def make(short: str, threads: int) -> Any:
        made.append((short, threads))
        return lambda batch: (short, len(batch))

    per_call = {("cpu", 1): cpu_ms / 1e3, ("cuda", 4): gpu_batch_ms / 1e3}
    monkeypatch.setattr(autoprovider, "_time", lambda run, batch: per_call[run(batch)])
    prefs, why = autoprovider.choose(np.zeros((3, 8, 8), np.float32), 4, make, cores=16)
    assert made == [("cuda", 1), ("cpu", 1)]
    assert prefs == ((chosen, "cpu") if chosen != "cpu" else ("cpu",))
    assert f"chose {chosen}" in why and "cuda" in why and "cpu" in why


@pytest.mark.unit
def test_auto_on_a_cpu_only_machine_loads_the_model_on_the_cpu(pulled: Path) -> None:
    """This machine: only the CPU provider can start, and a real model loads on it."""
    spec = ModelSpec.load(pulled / "blazeface")
    model = engine.load(pulled, spec, pulled / "blazeface" / "1", workers=1, preference=("auto",))
    assert model.providers == ["CPUExecutionProvider"]


@pytest.mark.unit
def test_process_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """`processes = auto` is one per core without a GPU; an explicit count wins."""
    from dataclasses import replace

    from edge import cli
    from edge.settings import Settings

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert cli.process_count(Settings()) == 16  # no GPU build of onnxruntime here
    assert cli.process_count(replace(Settings(), processes=3)) == 3
    assert not cli.gpu_machine(("cpu",))  # the CPU asked for: no GPU count whatever is here
    monkeypatch.setattr(cli, "gpu_machine", lambda prefs: True)
    assert cli.process_count(Settings()) == cli.GPU_PROCESSES
