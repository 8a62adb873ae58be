"""Choosing ONNX Runtime execution providers: the preference filtered by what is installed.

On a Jetson the preference TensorRT, CUDA, CPU applies; on an ARM or x86 board only the CPU
provider exists (with XNNPACK where the build has it). Each choice is logged with its reason.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger("edge.providers")

_ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def available() -> list[str]:
    return list(ort.get_available_providers())


def choose(
    preference: tuple[str, ...],
    *,
    model_path: Path,
    threads: int,
    trt_cache: Path | None,
    trt_fp16: bool,
    trt_workspace_mb: int,
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Providers with options for one session, and a sentence saying why."""
    have = set(available())
    chosen: list[tuple[str, dict[str, Any]]] = []
    skipped = []
    for short in preference or ("cpu",):
        name = _ORT_NAMES[short]
        if name not in have:
            skipped.append(short)
            continue
        opts: dict[str, Any] = {}
        if short == "tensorrt":
            opts = {
                "trt_fp16_enable": trt_fp16,
                "trt_max_workspace_size": trt_workspace_mb * 1024 * 1024,
            }
            if trt_cache is not None:
                cache = engine_cache_dir(trt_cache, model_path)
                cache.mkdir(parents=True, exist_ok=True)
                opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
        elif short == "xnnpack":
            opts = {"intra_op_num_threads": threads}
        chosen.append((name, opts))
    if not any(n == "CPUExecutionProvider" for n, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    why = f"preference {list(preference)}; installed {sorted(have)}"
    if skipped:
        why += f"; not installed here: {skipped}"
    return chosen, why


def engine_cache_dir(root: Path, model_path: Path) -> Path:
    """TensorRT engines keyed by model content, TensorRT and ONNX Runtime versions, so an OTA
    model update or a runtime upgrade never reuses a wrong engine, and an unchanged model on
    the same runtime never rebuilds (the cache lives on a persistent volume)."""
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
    return root / f"trt-{tensorrt_version()}-ort-{ort.__version__}" / digest


def tensorrt_version() -> str:
    try:
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    except ImportError:
        return "unknown"


def engine_cached(cache: Path) -> bool:
    """Whether a built TensorRT engine is already in `cache` (else the first load builds it,
    which can take minutes)."""
    return cache.is_dir() and any(cache.glob("*.engine"))
