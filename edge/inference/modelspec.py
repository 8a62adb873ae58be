"""`models/<name>/model.toml`: what a model is and how to feed it, parsed and validated once.

Example:

    task = "blazeface"            # a registered task plugin (edge.inference.tasks)
    input = [128, 128]            # width, height the network takes
    layout = "nhwc"               # or "nchw"
    mean = [127.5, 127.5, 127.5]  # pixel' = (pixel - mean) / std, per RGB channel
    std = [127.5, 127.5, 127.5]
    labels = ["face"]             # or labels_file = "labels.txt" (one per line)
    threshold = 0.5
    max_batch = 1                 # >1 only for models with a dynamic batch dimension
    max_delay_ms = 2.0            # how long the batcher may wait to fill a batch
    batching = "measured"         # batch up to the size measured fastest here, or "max"
    threads = "auto"              # intra-op threads per session, or an int
    sessions = "auto"             # concurrent sessions, or an int
    providers = []                # preference, e.g. ["tensorrt", "cuda", "cpu"]; empty: global
    [versions]                    # optional A/B traffic split: version -> weight
    1 = 0.9
    2 = 0.1
    [canary]                      # how a newly arriving version is tried (canarypolicy.py)
    share = 0.25
    frames = 300
    [options]                     # task-specific knobs (e.g. iou, unclip_ratio)
    iou = 0.3
    [tracking]                    # a track_id on each detection, per stream (tracking.py)
    enabled = true
    lost_after_frames = 30
    max_regions = 50              # a model with stages: the regions a frame's stages run on
    [[stages]]                    # a later stage: runs on crops of each region found before
    file = "rec.onnx"             # beside model.onnx in each version's folder
    task = "ctc_text"             # a task taking crops (edge/inference/tasks/crops.py)
    input = [1280, 48]            # the widest crop (longer ones are squeezed), the height
    mean = [127.5, 127.5, 127.5]  # as above; also labels, threshold, max_batch, [options]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.compat import tomllib
from edge.inference.canarypolicy import CanaryPolicy, CanaryPolicyError
from edge.inference.tracking import TrackingSpec, TrackingSpecError

_KNOWN = {
    "task",
    "input",
    "layout",
    "mean",
    "std",
    "labels",
    "labels_file",
    "threshold",
    "max_batch",
    "max_delay_ms",
    "batching",
    "threads",
    "sessions",
    "providers",
    "versions",
    "shadow",
    "canary",
    "options",
    "tracking",
    "description",
    "stages",
    "max_regions",
}
#: what a `[[stages]]` table may say: the file, then what a model's spec says of its input
_STAGE_KNOWN = {"file", "task", "input", "layout", "mean", "std", "labels", "threshold"}
_STAGE_KNOWN |= {"max_batch", "options"}


class ModelSpecError(ValueError):
    """model.toml is missing, unreadable or has a bad value; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    input_width: int
    input_height: int
    layout: str = "nhwc"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    labels: tuple[str, ...] = ()
    threshold: float = 0.5
    max_batch: int = 1
    max_delay_ms: float = 2.0
    batching: str = "measured"  # "measured": up to the fastest size found here; "max"
    threads: int | None = None  # None: decided automatically
    sessions: int | None = None  # None: decided automatically
    providers: tuple[str, ...] = ()
    versions: dict[str, float] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=dict)
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    options: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    #: later stages, run in order on crops of the regions the model finds
    stages: tuple[StageSpec, ...] = ()
    #: with stages: the best-scored regions of a frame they run on (the rest are left out)
    max_regions: int = 50

    @classmethod
    def load(cls, model_dir: Path) -> ModelSpec:
        path = model_dir / "model.toml"
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ModelSpecError(
                f"{path}: missing; every model directory needs a model.toml"
            ) from e
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ModelSpecError(f"{path}: cannot be read: {e}") from e
        return cls.from_dict(model_dir.name, raw, base=model_dir)

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any], base: Path | None = None) -> ModelSpec:
        where = f"model {name!r}"
        _known_keys(raw, _KNOWN, where)
        task = raw.get("task")
        if not isinstance(task, str) or not task:
            raise ModelSpecError(f'{where}: set task = "<name>" (e.g. "blazeface")')
        size = raw.get("input")
        if not (isinstance(size, list) and len(size) == 2 and all(_pos_int(v) for v in size)):
            raise ModelSpecError(
                f"{where}: input must be [width, height] in pixels, e.g. [128, 128]"
            )
        layout = raw.get("layout", "nhwc")
        if layout not in ("nhwc", "nchw"):
            raise ModelSpecError(f'{where}: layout must be "nhwc" or "nchw", not {layout!r}')
        batching = raw.get("batching", "measured")
        if batching not in ("measured", "max"):
            raise ModelSpecError(f'{where}: batching must be "measured" or "max", not {batching!r}')
        labels = tuple(str(v) for v in raw.get("labels", ()))
        if "labels_file" in raw:
            if base is None:
                raise ModelSpecError(f"{where}: labels_file needs a model directory")
            lf = (base / str(raw["labels_file"])).resolve()
            if base.resolve() not in lf.parents:
                raise ModelSpecError(f"{where}: labels_file must stay inside the model directory")
            labels = tuple(line.strip() for line in lf.read_text().splitlines() if line.strip())
        versions = {str(k): float(v) for k, v in dict(raw.get("versions", {})).items()}
        if any(w < 0 for w in versions.values()):
            raise ModelSpecError(f"{where}: version weights must be >= 0")
        canary = raw.get("canary", {})
        if not isinstance(canary, dict):
            raise ModelSpecError(f"{where}: [canary] must be a table, e.g. share = 0.25")
        try:
            policy = CanaryPolicy().updated(canary, f"{where}: [canary]")
        except CanaryPolicyError as e:
            raise ModelSpecError(str(e)) from None
        try:
            tracking = TrackingSpec.from_dict(raw.get("tracking", {"enabled": False}), where)
        except TrackingSpecError as e:
            raise ModelSpecError(str(e)) from None
        return cls(
            name=name,
            task=task,
            input_width=int(size[0]),
            input_height=int(size[1]),
            layout=layout,
            mean=_triple(raw.get("mean", (0.0, 0.0, 0.0)), f"{where}: mean"),
            std=_triple(raw.get("std", (1.0, 1.0, 1.0)), f"{where}: std"),
            labels=labels,
            threshold=_unit(raw.get("threshold", 0.5), f"{where}: threshold"),
            max_batch=_int_min(raw.get("max_batch", 1), 1, f"{where}: max_batch"),
            max_delay_ms=float(raw.get("max_delay_ms", 2.0)),
            batching=batching,
            threads=_auto(raw.get("threads", "auto"), f"{where}: threads"),
            sessions=_auto(raw.get("sessions", "auto"), f"{where}: sessions"),
            providers=tuple(str(p).lower() for p in raw.get("providers", ())),
            versions=versions,
            shadow=dict(raw.get("shadow", {})),
            canary=policy,
            options=dict(raw.get("options", {})),
            tracking=tracking,
            stages=_stages(raw.get("stages", []), name, where),
            max_regions=_int_min(raw.get("max_regions", 50), 1, f"{where}: max_regions"),
        )


@dataclass(frozen=True)
class StageSpec:
    """A later stage: its network's file (in the version's folder) and how to feed it."""

    file: str
    spec: ModelSpec


def _stages(raw: object, name: str, where: str) -> tuple[StageSpec, ...]:
    if not (isinstance(raw, list) and all(isinstance(t, dict) for t in raw)):
        raise ModelSpecError(f'{where}: stages must be tables, [[stages]] file = "rec.onnx" ...')
    stages = []
    for i, table in enumerate(raw):
        at = f"{where}: stage {i + 1}"
        _known_keys(table, _STAGE_KNOWN, at)
        file = table.get("file")
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".onnx"):
            raise ModelSpecError(
                f'{at}: file must name an .onnx file beside model.onnx, e.g. "rec.onnx"'
            )
        body = {k: v for k, v in table.items() if k != "file"}
        body.setdefault("layout", "nchw")
        spec = ModelSpec.from_dict(f"{name}/{Path(file).stem}", body)
        stages.append(StageSpec(file, spec))
    return tuple(stages)


def _known_keys(raw: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise ModelSpecError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")


def _pos_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _triple(v: object, what: str) -> tuple[float, float, float]:
    if not (isinstance(v, list | tuple) and len(v) == 3):
        raise ModelSpecError(f"{what} must be three numbers (R, G, B)")
    a, b, c = (float(x) for x in v)
    return (a, b, c)


def _unit(v: object, what: str) -> float:
    if not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
        raise ModelSpecError(f"{what} must be a number between 0 and 1")
    return float(v)


def _int_min(v: object, lo: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ModelSpecError(f"{what} must be an integer >= {lo}")
    return v


def _auto(v: object, what: str) -> int | None:
    if v == "auto":
        return None
    return _int_min(v, 1, f'{what} ("auto" or')
