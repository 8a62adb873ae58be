"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers a client reaches. By hand, not CI.

Targets:
  decode    edge.inference.decode.decode on raw bytes (the first byte picks the pixel limit), plus
  the
            pixel-limit rule: an image is returned only when its header size is within it;
  pipeline  decode then each task's preprocess (BlazeFace, DB text): the frame-level pipeline
            a worker runs before inference; tensors must be finite and of the model's shape;
  control   edge.codec.parse_control on the bytes as UTF-8 text, then Route.parse on the model.
Anything other than FrameError / ProtocolError / UnknownModel is a crash: libFuzzer stops and
writes the input to crash-<sha1>. Python code (edge, Pillow's PNG/JPEG plugins, json) is
instrumented for coverage; simplejpeg / libjpeg-turbo and zlib are C and only run.

    pip install -e '.[fuzz]'    # atheris
    python bench/fuzz_atheris.py decode -max_total_time=300 -timeout=5 -rss_limit_mb=1024
    python bench/fuzz_atheris.py control -runs=200000

A corpus directory per target (artifacts/fuzz/<target>/) is seeded with real frames and
control messages on first use and grows as libFuzzer finds new paths; every argument after
the target goes to libFuzzer. `-timeout` turns a slow input (a decode bomb in time) into a
finding, `-rss_limit_mb` a memory bomb.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["edge", "PIL", "json"]):
    import numpy as np

    # Pillow imports its format plugins on first use: import them here to instrument them
    from PIL import ImageFile, PngImagePlugin  # noqa: F401

    from edge.codec import ProtocolError, parse_control
    from edge.frames import FrameError
    from edge.inference.decode import decode
    from edge.inference.modelspec import ModelSpec
    from edge.inference.tasks import get_task
    from edge.models.repository import Route, UnknownModel

from tests.fuzz_util import seed_images  # noqa: E402

LIMITS = [64 * 64, 640 * 480, 1920 * 1080, 4096 * 4096]
TASKS = [get_task(s.task)(s) for s in (ModelSpec.load(ROOT / "models" / n)
                                       for n in ("blazeface", "ppocr_det"))]  # fmt: skip


def fuzz_decode(data: bytes) -> None:
    if not data:
        return
    limit = LIMITS[data[0] % len(LIMITS)]
    try:
        im = decode(data[1:], (128, 128), limit)
    except FrameError as e:
        assert e.code == "bad_frame", e.code
        return
    assert 0 < im.width * im.height <= limit, (im.width, im.height, limit)
    assert im.pixels.dtype == np.uint8 and im.pixels.ndim == 3 and im.pixels.shape[2] == 3
    assert im.pixels.shape[0] <= im.height and im.pixels.shape[1] <= im.width


def fuzz_pipeline(data: bytes) -> None:
    for task in TASKS:
        try:
            im = decode(data, task.decode_hint(), 4096 * 4096)
        except FrameError:
            return
        tensor, _ = task.preprocess(im)
        w, h = task.spec.input_width, task.spec.input_height
        assert tensor.shape == ((h, w, 3) if task.spec.layout == "nhwc" else (3, h, w))
        assert np.isfinite(tensor).all()


def fuzz_control(data: bytes) -> None:
    text = data.decode("utf-8", "surrogatepass") if _utf8(data) else data.decode("latin-1")
    for limit in (4096, 64):
        try:
            ctl = parse_control(text, limit)
        except ProtocolError:
            continue
        assert ctl.type in ("config", "stats", "ping")
        if ctl.config is not None and ctl.config.model is not None:
            try:
                Route.parse(ctl.config.model)
            except UnknownModel:
                pass


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


CONTROL_SEEDS = [
    '{"type":"config","threshold":0.6,"max_frame_age_ms":250,"model":"blazeface@1"}',
    '{"type":"config","max_frame_age_ms":null,"credits":true,"stats_every_s":0}',
    '{"type":"config","stats_every_s":1.5}',
    '{"type":"stats"}',
    '{"type":"ping"}',
]

TARGETS = {"decode": fuzz_decode, "pipeline": fuzz_pipeline, "control": fuzz_control}

#: libFuzzer dictionaries: tokens the parsers branch on
_IMAGE_TOKENS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"\xff\xc0", b"\xff\xc2", b"\xff\xc4",
                 b"\xff\xda", b"\xff\xdb", b"\xff\xdd", b"\xff\xd9", b"\xff\xe1Exif", b"IHDR",
                 b"PLTE", b"IDAT", b"IEND", b"tRNS", b"iCCP", b"zTXt", b"iTXt", b"tEXt", b"acTL",
                 b"fcTL", b"fdAT", b"sRGB", b"gAMA", b"pHYs", b"\xff\xff\xff\xff"]  # fmt: skip
_CONTROL_TOKENS = ['"type"', '"config"', '"stats"', '"ping"', '"threshold"', '"model"',
                   '"max_frame_age_ms"', '"credits"', '"stats_every_s"', "null", "true", "1e309",
                   "-0", '"blazeface@1"', "NaN", "Infinity", "{", "}", "[", "]", ":",
                   ","]  # fmt: skip
DICTIONARY = {
    "control": [t.encode() for t in _CONTROL_TOKENS],
    "decode": _IMAGE_TOKENS,
    "pipeline": _IMAGE_TOKENS,
}  # fmt: skip


def write_dictionary(path: Path, target: str) -> None:
    lines = ['"' + "".join(f"\\x{b:02x}" for b in t) + '"' for t in DICTIONARY[target]]
    path.write_text("\n".join(lines) + "\n")


def seed(corpus: Path, target: str) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    if target == "control":
        items = [s.encode() for s in CONTROL_SEEDS]
    else:
        images = seed_images()
        items = [bytes([3]) + d for d in images] if target == "decode" else images
    for i, item in enumerate(items):
        (corpus / f"seed-{i:02d}").write_bytes(item)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus]")
    target = sys.argv[1]
    args = [sys.argv[0], *sys.argv[2:]]
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = ROOT / "artifacts" / "fuzz" / target
        seed(corpus, target)
        args.append(str(corpus))
    if not any(a.startswith("-dict=") for a in args):
        words = ROOT / "artifacts" / "fuzz" / f"{target}.dict"
        write_dictionary(words, target)
        args.insert(1, f"-dict={words}")
    atheris.Setup(args, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
