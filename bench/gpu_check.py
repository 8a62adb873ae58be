"""End-to-end check of the GPU provider path, for a machine with onnxruntime-gpu and a GPU.

Starts `edge serve` (a separate process) with the default preference TensorRT, CUDA, CPU,
streams real photos over WebSocket to both default models, and checks that:
  - each model's sessions run on the GPU provider the installed build could start (the
    gateway's own log says which and why, and /v1/models lists it);
  - faces and text lines come back, and agree with the same frames run on the CPU provider
    in this process (same boxes within IoU 0.9, scores within 0.02);
  - every frame of a short multi-stream burst is answered exactly once.
Prints a report and writes it as JSON (--json).

    python bench/gpu_check.py --json gpu_check.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.bench.servers import Server, free_port, serve_command, wait_ready  # noqa: E402
from edge.inference import engine  # noqa: E402
from edge.inference.decode import decode  # noqa: E402
from edge.inference.modelspec import ModelSpec  # noqa: E402
from edge.models.shadow import box_iou  # noqa: E402
from tests.conftest import jpeg, png  # noqa: E402

FRAMES = {
    "blazeface": [("astronaut.png", "jpeg"), ("camera.png", "jpeg")],
    "ppocr_det": [("page.png", "png"), ("text.png", "png")],
}


def agreement(gpu: list[dict[str, Any]], cpu: list[dict[str, Any]]) -> dict[str, float]:
    """Each CPU box's best IoU with a GPU box, and the score difference of that pair."""
    worst_iou, worst_score = 1.0, 0.0
    for c in cpu:
        best = max(gpu, key=lambda g: box_iou(g["box"], c["box"]), default=None)
        if best is None:
            return {"min_iou": 0.0, "max_score_diff": 1.0}
        worst_iou = min(worst_iou, box_iou(best["box"], c["box"]))
        worst_score = max(worst_score, abs(best["score"] - c["score"]))
    return {"min_iou": worst_iou, "max_score_diff": worst_score}


def cpu_reference(models: Path, name: str, data: bytes) -> list[dict[str, Any]]:
    spec = ModelSpec.load(models / name)
    model = engine.load(models, spec, models / name / "1", workers=1, preference=("cpu",))
    image = decode(data, model.task.decode_hint(), 1 << 30)
    out = model.infer_image(image)
    return list(out["detections"])  # type: ignore[call-overload]


async def stream_checks(url: str, frames: dict[str, list[bytes]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/models") as r:
            out["models"] = (await r.json())["models"]
        ws_base = url.replace("http", "ws", 1) + "/v1/stream?model="
        out["results"] = {}
        for name, datas in frames.items():
            ws = await http.ws_connect(ws_base + name, max_msg_size=0)
            await ws.receive_json()  # hello
            got = []
            for data in datas:
                await ws.send_bytes(data)
                got.append(await asyncio.wait_for(ws.receive_json(), 60))
            await ws.close()
            out["results"][name] = got
        # a burst: 8 streams per model, 50 frames each, as fast as they go
        sent, answered, twice = 0, 0, 0

        async def burst(name: str, data: bytes) -> None:
            nonlocal sent, answered, twice
            ws = await http.ws_connect(ws_base + name, max_msg_size=0)
            await ws.receive_json()
            seen: dict[int, int] = {}
            for _ in range(50):
                await ws.send_bytes(data)
            sent += 50
            while len(seen) < 50:
                m = await asyncio.wait_for(ws.receive_json(), 60)
                for s in m.get("seqs") or ([m["seq"]] if "seq" in m else []):
                    seen[s] = seen.get(s, 0) + 1
            await asyncio.sleep(0.5)  # anything answered twice would show up now
            while True:
                try:
                    m = await asyncio.wait_for(ws.receive_json(), 0.2)
                except asyncio.TimeoutError:
                    break
                for s in m.get("seqs") or ([m["seq"]] if "seq" in m else []):
                    seen[s] = seen.get(s, 0) + 1
            answered += len(seen)
            twice += sum(1 for n in seen.values() if n > 1)
            await ws.close()

        t0 = time.monotonic()
        await asyncio.gather(
            *(burst(n, frames[n][0]) for n in frames for _ in range(8)),
        )
        out["burst"] = {
            "sent": sent,
            "answered": answered,
            "answered_twice": twice,
            "seconds": round(time.monotonic() - t0, 2),
        }
        async with http.get(url + "/metrics") as r:
            metrics = await r.text()
        out["metrics"] = [
            line
            for line in metrics.splitlines()
            if line.startswith(("edge_batch_limit", "edge_batch_size_count", "edge_batch_size_sum"))
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--log", type=Path, default=Path("gpu_check_gateway.log"))
    args = ap.parse_args()
    report: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "device": ort.get_device(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        report["gpu"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        report["gpu"] = f"nvidia-smi: {e}"
    print(json.dumps(report, indent=2), flush=True)

    frames = {
        name: [jpeg(img) if kind == "jpeg" else png(img) for img, kind in items]
        for name, items in FRAMES.items()
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EDGE_LOG_LEVEL": "info", "EDGE_LOG_FORMAT": "text"}
    env.setdefault("EDGE_PROVIDERS", "tensorrt,cuda,cpu")
    env |= {"EDGE_MAX_FPS_PER_CLIENT": "0", "EDGE_MAX_FPS_PER_STREAM": "0", "EDGE_GRPC_PORT": "0"}
    t_start = time.monotonic()
    with args.log.open("w") as log:
        proc = subprocess.Popen(
            serve_command(args.models, port, "--max-streams", "100"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            asyncio.run(wait_ready(Server(url, proc)))
            report["ready_after_s"] = round(time.monotonic() - t_start, 1)
            report |= asyncio.run(stream_checks(url, frames))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    report["gateway_log"] = [
        line
        for line in args.log.read_text().splitlines()
        if any(k in line for k in ("provider", "falling back", "EP Error", "warmed", "batch limit"))
    ]
    checks = {}
    for name, items in FRAMES.items():
        for (img, _), data, res in zip(items, frames[name], report["results"][name], strict=True):
            cpu = cpu_reference(args.models, name, data)
            gpu = res.get("detections", [])
            checks[f"{name}/{img}"] = {
                "gpu_boxes": len(gpu),
                "cpu_boxes": len(cpu),
                "inference_ms": res.get("timing", {}).get("inference_ms"),
                **agreement(gpu, cpu),
            }
    report["agreement"] = checks
    rows = {r["name"]: r for r in report["models"]}
    gpu_providers = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    on_gpu = {n: rows[n].get("providers", [None])[0] in gpu_providers for n in FRAMES}
    report["verdict"] = {
        "models_on_gpu": on_gpu,
        "results_agree_with_cpu": all(
            c["gpu_boxes"] == c["cpu_boxes"] and c["min_iou"] >= 0.9 and c["max_score_diff"] <= 0.02
            for c in checks.values()
        ),
        "every_frame_answered_once": report["burst"]["answered"] == report["burst"]["sent"]
        and report["burst"]["answered_twice"] == 0,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "models"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
