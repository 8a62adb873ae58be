"""Where a batch's time goes on the GPU layout, step by step, without the network.

The stream benchmark found the text model at about a tenth of the raw sessions' rate on a GPU
(docs/benchmarks.md, "GPU runs"). This splits the workers' batch path into cumulative steps,
each run by `--threads` threads at once for `--seconds`, on this machine, in this run:

  raw     the model's sessions called directly with one preprocessed batch, one thread per
          session (bench/stream.py's raw baseline);
  engine  `LoadedModel.run` with the same batch: padding, the session's own thread, outputs;
  fresh   the same, with a new batch array stacked from the frames' tensors each time;
  host    what a worker does per batch: decode and preprocess each frame, stack, run,
          postprocess each frame and encode its reply (edge/core/pipeline.py without the sockets).

Frames per second per step, and each as a ratio to `raw`. On a box without a GPU,
`--gpu-layout` lays the CPU sessions out as on a GPU (two sessions on threads of their own).

    python bench/gpu_steps.py --model ppocr_det --max-batch 4 --threads 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from layout import timed  # noqa: E402

from edge import codec  # noqa: E402
from edge.bench.frames import frame_jpeg  # noqa: E402
from edge.bench.servers import scratch_repository  # noqa: E402
from edge.frames import Result, Timing  # noqa: E402
from edge.inference import engine, providers  # noqa: E402
from edge.inference.decode import decode  # noqa: E402
from edge.inference.modelspec import ModelSpec  # noqa: E402
from tests.imagedata import sample_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="ppocr_det")
    ap.add_argument("--providers", default="cuda,cpu", help="preference, as EDGE_PROVIDERS")
    ap.add_argument("--max-batch", type=int, help="override the model's max_batch")
    ap.add_argument("--threads", type=int, default=4, help="workers calling at once")
    ap.add_argument("--seconds", type=float, default=8.0, help="per step")
    ap.add_argument("--image", default="page.png", help="scikit-image sample to send")
    ap.add_argument("--gpu-layout", action="store_true", help="GPU layout on the CPU")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    models = args.models
    if args.max_batch:
        models = scratch_repository(args.models, [args.model], args.max_batch)
    if args.gpu_layout:
        providers.gpu_first = lambda prefs: True  # type: ignore[assignment]
    spec = ModelSpec.load(models / args.model)
    model = engine.load(
        models,
        spec,
        models / args.model / "1",
        workers=args.threads,
        preference=tuple(p.strip() for p in args.providers.split(",")),
    )
    task, rows = model.task, spec.max_batch
    data = frame_jpeg((640, 480), sample_image(args.image))
    fit = task.decode_hint()
    image = decode(data, fit, 1 << 30)
    tensor, ctx = task.preprocess(image)
    batch = np.stack([tensor] * rows)
    print(
        f"model {model.ref} on {model.sessions[0].get_providers()[0]}; layout "
        f"{model.layout.sessions} x {model.layout.threads} ({model.layout.reason}); batch "
        f"{rows}; {args.threads} threads"
    )

    def raw(i: int) -> int:
        s = model.sessions[i % len(model.sessions)]
        s.run(model.output_names, {model.input_name: batch})
        return rows

    def engine_run(i: int) -> int:
        model.run(batch, i)
        return rows

    def fresh(i: int) -> int:
        model.run(np.stack([tensor] * rows), i)
        return rows

    def host(i: int) -> int:
        images, tensors, ctxs = [], [], []
        for _ in range(rows):
            im = decode(data, fit, 1 << 30)
            x, c = task.preprocess(im)
            images.append(im)
            tensors.append(x)
            ctxs.append(c)
        outputs = model.run(np.stack(tensors), i)
        for k in range(rows):
            payload = task.postprocess([o[k] for o in outputs], ctxs[k], images[k], spec.threshold)
            timing = Timing(queue_ms=0.0, inference_ms=0.0, total_ms=0.0)
            w, h = images[k].width, images[k].height
            codec.result(Result(k, model.ref, w, h, timing, payload))
        return rows

    figures: dict[str, float] = {}
    for name, step in (("raw", raw), ("engine", engine_run), ("fresh", fresh), ("host", host)):
        callers = len(model.sessions) if name == "raw" else args.threads
        figures[name] = timed(callers, args.seconds, step)
        print(
            f"  {name:7s} {figures[name]:8.1f} frames/s  {figures[name] / figures['raw']:.2f}x raw"
        )
    model.close()
    if args.json:
        args.json.write_text(json.dumps({"model": model.ref, "fps": figures}, indent=2))


if __name__ == "__main__":
    main()
