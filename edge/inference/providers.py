"""Choosing ONNX Runtime execution providers: the preference filtered by what is installed.

On a Jetson the preference TensorRT, CUDA, CPU applies; on an ARM or x86 board only the CPU
provider exists (with XNNPACK where the build has it). Each choice is logged with its reason.
"""

from __future__ import annotations

import ctypes
import functools
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


#: TensorRT's runtime library by the sonames of its releases 10 and 8
_TRT_LIBS = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")


@functools.cache
def tensorrt_runtime() -> bool:
    """Whether TensorRT's own libraries load. onnxruntime-gpu lists the TensorRT provider
    whether or not they are installed and only fails when a session asks for it (seen on an
    H100 without TensorRT: an error and a fallback printed by onnxruntime itself)."""
    for name in _TRT_LIBS:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def usable() -> set[str]:
    """The installed providers that can start here."""
    have = set(available())
    if "TensorrtExecutionProvider" in have and not tensorrt_runtime():
        have.discard("TensorrtExecutionProvider")
    return have


def gpu_first(preference: tuple[str, ...]) -> bool:
    """Whether the first preferred provider that can start here runs on a GPU."""
    have = usable()
    for short in preference:
        if _ORT_NAMES[short] in have:
            return short in ("tensorrt", "cuda")
    return False


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
    listed = set(available())
    have = usable()
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
    why = f"preference {list(preference)}; installed {sorted(listed)}"
    if skipped:
        why += f"; not installed here: {skipped}"
    if listed - have:
        why += "; TensorRT's libraries (libnvinfer) are missing, so its provider cannot start"
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


#: the providers `auto` may time, in the order ties go
AUTO_ORDER = ("tensorrt", "cuda", "xnnpack", "cpu")
#: a GPU provider must beat the CPU's estimate by this much to be chosen: near a tie the CPU
#: leaves the GPU to other work and keeps every process's answer the same
GPU_MARGIN = 1.1


def auto_candidates() -> list[str]:
    """The providers that can start here, as `auto` times them."""
    have = usable()
    return [s for s in AUTO_ORDER if _ORT_NAMES[s] in have]


def pick_fastest(rates: dict[str, float]) -> str:
    """The provider with the most frames a second (the machine's estimate, not one call's
    latency): the CPU's figure counts every core, a GPU's its best batch."""
    if not rates:
        return "cpu"
    cpu = rates.get("cpu", 0.0)
    best = max(rates, key=lambda s: (rates[s], -AUTO_ORDER.index(s)))
    if best in ("tensorrt", "cuda") and rates[best] < GPU_MARGIN * cpu:
        return "cpu"
    return best
