"""Server and model metadata, and what a protocol model name means here.

Every model of the repository is served two ways, under two names:

- `NAME`, the pipeline: one input `image` (BYTES [1], an encoded JPEG or PNG) that runs
  through decode, preprocess, the network and the task's postprocess like a WebSocket frame;
  outputs the result as the typed tensors its task and later stages declare (`Task.outputs`)
  and as its JSON (`result`).
- `NAME.raw`, the network: its ONNX input and outputs as they are, the input at the size the
  gateway feeds it (`model.toml`'s `input`), batched with every other frame of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge import __version__
from edge.inference.engine import LoadedModel
from edge.inference.tasks.base import Output
from edge.kserve.errors import KServeError
from edge.kserve.tensors import ONNX_TYPES, datatype_of
from edge.models.repository import Repository, Route, UnknownModel

SERVER = "edge-gateway"
EXTENSIONS = ("binary_tensor_data",)
RAW_SUFFIX = ".raw"
IMAGE = "image"
#: the platform each form reports
PIPELINE_PLATFORM = "edge_pipeline"
RAW_PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


IMAGE_INPUT = TensorSpec(IMAGE, "BYTES", (1,))
RESULT = TensorSpec("result", "BYTES", (1,))  # the result message's JSON, as on the WebSocket


@dataclass(frozen=True)
class Target:
    """What a protocol model name asks for: a repository model, and which way in."""

    name: str
    raw: bool

    @property
    def public(self) -> str:
        return self.name + RAW_SUFFIX if self.raw else self.name

    @classmethod
    def parse(cls, text: str) -> Target:
        raw = text.endswith(RAW_SUFFIX)
        name = text[: -len(RAW_SUFFIX)] if raw else text
        try:
            pinned = Route.parse(name).version is not None  # a version goes in the path
        except UnknownModel:
            pinned = True
        if pinned:
            raise KServeError("not_found", f"no model named {text[:128]!r}")
        return cls(name, raw)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER, "version": __version__, "extensions": list(EXTENSIONS)}


def resolve(repo: Repository, target: Target, version: str) -> LoadedModel:
    """The loaded version a request for `target` (and `version`, "" for the serving one) runs
    on; not_found for a model or version the repository does not have, unavailable for one
    not loaded (yet)."""
    if target.name not in repo.names():
        raise KServeError("not_found", f"no model named {target.public!r}; serving {names(repo)}")
    try:
        return repo.route(Route(target.name, version or None)).model
    except UnknownModel as e:
        if version and version not in versions(repo, target.name, any_state=True):
            msg = f"model {target.public!r} has no version {version!r}"
            raise KServeError("not_found", msg) from None
        raise KServeError("unavailable", f"{target.public}: {e}") from None


def names(repo: Repository) -> list[str]:
    """Every protocol model name: each repository model's pipeline and raw forms."""
    return [n for name in repo.names() for n in (name, name + RAW_SUFFIX)]


def versions(repo: Repository, name: str, any_state: bool = False) -> list[str]:
    """The model's versions that are loaded (`any_state`: that the repository knows)."""
    return [
        str(row["version"])
        for row in repo.describe()
        if row["name"] == name
        and row["version"] is not None
        and (any_state or row["state"] == "ready")
    ]


def model_metadata(repo: Repository, target: Target, version: str) -> dict[str, Any]:
    model = resolve(repo, target, version)
    if target.raw:
        platform = RAW_PLATFORM
        inputs, outputs = [raw_input(model)], raw_outputs(model)
    else:
        platform = PIPELINE_PLATFORM
        inputs, outputs = [IMAGE_INPUT], list(pipeline_outputs(model))
    return {
        "name": target.public,
        "versions": [version] if version else versions(repo, target.name),
        "platform": platform,
        "inputs": [t.as_dict() for t in inputs],
        "outputs": [t.as_dict() for t in outputs],
    }


def pipeline_outputs(model: LoadedModel) -> tuple[TensorSpec, ...]:
    """The outputs the model declares (`declared`), in order, then `result`."""
    return (*(TensorSpec(o.name, o.datatype, o.shape) for o in declared(model)), RESULT)


def declared(model: LoadedModel) -> tuple[Output, ...]:
    """The tensors a model's results carry: its task's (`Task.outputs`), then each later
    stage's (an OCR model's `texts` and `text_confidences`), one element per region."""
    return (*model.task.outputs, *(o for stage in model.stages for o in stage.task.outputs))


def raw_input(model: LoadedModel) -> TensorSpec:
    """The network's input: its batch axis as the ONNX model has it (-1: any), the rest at
    the size the gateway feeds it."""
    first = model.input_shape[0] if model.input_shape else -1
    batch = first if isinstance(first, int) and first > 0 else -1
    shape = (batch, *model.sample_shape)
    return TensorSpec(model.input_name, datatype_of(model.sample_dtype), shape)


def raw_outputs(model: LoadedModel) -> list[TensorSpec]:
    return [
        TensorSpec(
            name,
            ONNX_TYPES.get(kind, "BYTES"),
            tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape),
        )
        for name, kind, shape in model.outputs
    ]
