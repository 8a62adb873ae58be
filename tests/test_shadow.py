"""Agreement between a shadow version and the serving one."""

import pytest

from edge.models.shadow import agree

pytestmark = pytest.mark.unit


def det(label: str, box: list[float]) -> dict[str, object]:
    return {"label": label, "score": 0.9, "box": box}


def test_agreement_is_f1_of_same_label_matches() -> None:
    """Guards against counting a box twice, matching across labels or dividing by zero."""
    a = {"detections": [det("face", [0, 0, 10, 10]), det("face", [20, 20, 30, 30])]}
    assert agree(a, a) == 1.0
    assert agree({"detections": []}, {"detections": []}) == 1.0
    b = {"detections": [det("face", [0, 0, 10, 10])]}
    assert agree(a, b) == pytest.approx(2 / 3)
    c = {"detections": [det("cat", [0, 0, 10, 10]), det("face", [1, 1, 10, 10])]}
    assert agree(b, c) == pytest.approx(2 / 3)  # the face matches, the cat does not
    d = {"detections": [det("face", [0, 0, 10, 10]), det("face", [0, 0, 10, 10])]}
    assert agree(b, d) == pytest.approx(2 / 3)  # one box cannot match twice
    assert agree(b, {"detections": []}) == 0.0


def test_classes_agree_on_the_top_class() -> None:
    top = {"classes": [{"label": "cat", "score": 0.8}, {"label": "dog", "score": 0.1}]}
    other = {"classes": [{"label": "dog", "score": 0.6}]}
    assert agree(top, top) == 1.0 and agree(top, other) == 0.0
