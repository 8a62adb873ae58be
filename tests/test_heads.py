"""Classification and YOLO heads, on tiny ONNX graphs whose outputs are known exactly.

Each graph ignores its input and returns a constant tensor, so what the task makes of a real
ONNX Runtime output can be checked against answers worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.frames import Image
from edge.inference.modelspec import ModelSpec
from edge.inference.tasks import TASKS, get_task
from edge.inference.tasks.yolo import detect_format

pytestmark = pytest.mark.unit


def constant_model(output: np.ndarray, input_shape: list[int]) -> ort.InferenceSession:
    """A session whose single output is always `output`, whatever the input."""
    node = helper.make_node("Constant", [], ["out"], value=numpy_helper.from_array(output))
    graph = helper.make_graph(
        [node],
        "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def infer(raw: dict, output: np.ndarray, frame: tuple[int, int], threshold: float) -> dict:
    """Preprocess a blank `frame` (width, height), run the constant model, postprocess."""
    spec = ModelSpec.from_dict("m", {"input": [64, 64], **raw})
    task = get_task(spec.task)(spec)
    image = Image(np.zeros((frame[1], frame[0], 3), np.uint8), *frame)
    tensor, ctx = task.preprocess(image)
    session = constant_model(output.astype(np.float32), [1, *tensor.shape])
    outputs = session.run(None, {"images": tensor[None]})
    return task.postprocess([o[0] for o in outputs], ctx, image, threshold)


def test_registry_names_every_task_and_refuses_unknown_ones() -> None:
    """Guards against a task missing from the registry or a vague error for a typo."""
    assert {n: c.kind for n, c in TASKS.items()} == {
        "blazeface": "face_detection",
        "db_text": "text_detection",
        "classification": "classification",
        "yolo": "object_detection",
        "text_angle": "text_orientation",
        "ctc_text": "text_recognition",
    }
    with pytest.raises(ValueError, match="unknown task 'yolov8'; known tasks: blazeface, "):
        get_task("yolov8")


# --- classification ----------------------------------------------------------------------

LOGITS = np.array([[1.0, 2.0, 3.0, 0.5]])
CLS = {"task": "classification", "labels": ["cat", "dog", "bird"]}


def test_softmax_top_k_and_labels() -> None:
    """Guards against unnormalised scores, a wrong order, or a crash for a class with no
    label (it is named by its index)."""
    out = infer({**CLS, "options": {"top_k": 2}}, LOGITS, (64, 64), 0.0)
    # softmax: exp(x - 3) = e^-2, e^-1, 1, e^-2.5, over their sum 1.585305
    assert out == {
        "classes": [
            {"index": 2, "label": "bird", "score": 0.6308},
            {"index": 1, "label": "dog", "score": 0.2321},
        ]
    }
    everything = infer({**CLS, "options": {"top_k": 10}}, LOGITS, (64, 64), 0.0)["classes"]
    assert [c["label"] for c in everything] == ["bird", "dog", "cat", "3"]
    assert math.isclose(sum(c["score"] for c in everything), 1.0, abs_tol=2e-4)


def test_raw_scores_and_threshold() -> None:
    """Guards against softmax applied when the model already outputs scores, and against
    classes under the threshold being reported."""
    raw = {**CLS, "options": {"softmax": False, "top_k": 3}}
    out = infer(raw, LOGITS, (64, 64), 1.5)
    assert [(c["index"], c["score"]) for c in out["classes"]] == [(2, 3.0), (1, 2.0)]


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
def test_classification_input_is_the_model_size(resize: str) -> None:
    """Guards against a resize mode producing a tensor the network cannot take."""
    spec = ModelSpec.from_dict(
        "m", {"input": [48, 32], "layout": "nchw", **CLS, "options": {"resize": resize}}
    )
    task = get_task("classification")(spec)
    tensor, _ = task.preprocess(Image(np.zeros((90, 40, 3), np.uint8), 400, 900))
    assert tensor.shape == (3, 32, 48) and tensor.dtype == np.float32


def test_crop_asks_the_decoder_for_enough_pixels() -> None:
    """Guards against a centre crop being upscaled from a frame decoded too small."""
    raw = {"input": [224, 224], **CLS}
    crop = get_task("classification")(
        ModelSpec.from_dict("m", {**raw, "options": {"resize": "crop"}})
    )
    fit = get_task("classification")(
        ModelSpec.from_dict("m", {**raw, "options": {"resize": "letterbox"}})
    )
    width, height = 1280, 720
    scale = min(crop.decode_hint()[0] / width, crop.decode_hint()[1] / height)
    assert height * scale >= 224  # the decoder keeps at least this much
    assert fit.decode_hint() == (224, 224)


def test_bad_classification_option_is_refused() -> None:
    """Guards against a mistyped option silently falling back to a default."""
    with pytest.raises(ValueError, match="option top_k must be an integer"):
        get_task("classification")(
            ModelSpec.from_dict("m", {"input": [8, 8], **CLS, "options": {"top_k": "5"}})
        )
    with pytest.raises(ValueError, match="option resize must be one of"):
        get_task("classification")(
            ModelSpec.from_dict("m", {"input": [8, 8], **CLS, "options": {"resize": "fit"}})
        )


# --- YOLO --------------------------------------------------------------------------------


def v8_output() -> np.ndarray:
    """(1, 4 + 2, 5): cx, cy, w, h, score(class 0), score(class 1) per column."""
    columns = [
        [32, 32, 16, 8, 0.9, 0.1],  # person, kept
        [33, 32, 16, 8, 0.8, 0.0],  # person, IoU 0.88 with the first: suppressed
        [33, 32, 16, 8, 0.0, 0.7],  # dog over the person: another class, kept
        [10, 10, 4, 4, 0.3, 0.0],  # under the threshold
        [2, 20, 8, 4, 0.0, 0.6],  # dog sticking out of the frame: clipped
    ]
    return np.array(columns, dtype=np.float32).T[None]


def test_v8_decoding_class_aware_nms_and_letterbox() -> None:
    """Guards against the v8 layout read the wrong way round, NMS across classes, and boxes
    not mapped back through the letterbox (a 128x64 frame: scale 0.5, 16 px pad on top)."""
    raw = {"task": "yolo", "labels": ["person", "dog"]}
    out = infer(raw, v8_output(), (128, 64), 0.5)
    assert out == {
        "detections": [
            {"label": "person", "score": 0.9, "box": [48.0, 24.0, 80.0, 40.0]},
            {"label": "dog", "score": 0.7, "box": [50.0, 24.0, 82.0, 40.0]},
            {"label": "dog", "score": 0.6, "box": [0.0, 4.0, 12.0, 12.0]},
        ]
    }


def test_same_class_overlap_below_iou_is_kept() -> None:
    """Guards against the iou option being ignored."""
    raw = {"task": "yolo", "labels": ["person", "dog"], "options": {"iou": 0.9}}
    out = infer(raw, v8_output(), (128, 64), 0.5)
    assert [d["score"] for d in out["detections"]] == [0.9, 0.8, 0.7, 0.6]


def v5_output() -> np.ndarray:
    """(1, 5, 5 + 2): cx, cy, w, h, objectness, p(class 0), p(class 1) per row."""
    rows = [
        [32, 32, 16, 8, 0.9, 0.5, 1.0],  # class 1, score 0.9
        [20, 50, 8, 12, 0.8, 1.0, 0.0],  # class 0, score 0.8
        [20, 50, 8, 12, 0.6, 1.0, 0.0],  # the same box, worse: suppressed
        [40, 40, 8, 8, 0.4, 1.0, 1.0],  # objectness under the threshold
        [50, 10, 8, 8, 0.9, 0.5, 0.5],  # objectness x class = 0.45: under it
    ]
    return np.array(rows, dtype=np.float32)[None]


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"labels": ["car", "bus"]}, ["bus", "car"]),  # auto: 7 columns = 5 + 2 labels
        ({"options": {"format": "v5"}}, ["1", "0"]),  # no labels: named by index
    ],
)
def test_v5_decoding_scores_by_objectness_times_class(raw: dict, names: list[str]) -> None:
    """Guards against ignoring objectness, mixing up the v5 and v8 layouts, and boxes not
    mapped back through a side letterbox (a 64x128 frame: scale 0.5, 16 px pad left)."""
    out = infer({"task": "yolo", **raw}, v5_output(), (64, 128), 0.5)
    assert out == {
        "detections": [
            {"label": names[0], "score": 0.9, "box": [16.0, 56.0, 48.0, 72.0]},
            {"label": names[1], "score": 0.8, "box": [0.0, 88.0, 16.0, 112.0]},
        ]
    }


def test_format_detection() -> None:
    """Guards against a v5 output read as v8 or the reverse, and against silently decoding
    an output that fits neither."""
    assert detect_format((84, 8400), 80) == "v8"
    assert detect_format((25200, 85), 80) == "v5"
    assert detect_format((84, 8400), 0) == "v8"
    assert detect_format((25200, 85), 0) == "v5"
    with pytest.raises(ValueError, match="fits neither"):
        detect_format((84, 8400), 3)


def test_yolo_input_is_letterboxed_grey_and_scaled_to_one() -> None:
    """Guards against a different pad colour, 0..255 inputs or NHWC where v5/v8 expect
    grey 114 padding, RGB / 255 and NCHW."""
    spec = ModelSpec.from_dict("m", {"task": "yolo", "input": [64, 64]})
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[..., 0] = 255
    tensor, _ = get_task("yolo")(spec).preprocess(Image(pixels, 64, 32))
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    assert tensor[:, 0, 0] == pytest.approx([114 / 255] * 3)
    assert tensor[:, 32, 32] == pytest.approx([1.0, 0.0, 0.0])
