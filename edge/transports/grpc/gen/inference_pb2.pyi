from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferenceRequest(_message.Message):
    __slots__ = ("payload", "model_id", "threshold", "max_frame_age_ms", "merge_dropped")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    MERGE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    model_id: str
    threshold: float
    max_frame_age_ms: float
    merge_dropped: bool
    def __init__(self, payload: _Optional[bytes] = ..., model_id: _Optional[str] = ..., threshold: _Optional[float] = ..., max_frame_age_ms: _Optional[float] = ..., merge_dropped: bool = ...) -> None: ...

class InferenceResponse(_message.Message):
    __slots__ = ("scores", "label", "status", "seq", "model", "width", "height", "detections", "classes", "timing", "reason", "code", "message", "seqs")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT: _ClassVar[InferenceResponse.Status]
        DROPPED: _ClassVar[InferenceResponse.Status]
        ERROR: _ClassVar[InferenceResponse.Status]
    RESULT: InferenceResponse.Status
    DROPPED: InferenceResponse.Status
    ERROR: InferenceResponse.Status
    class Point(_message.Message):
        __slots__ = ("x", "y")
        X_FIELD_NUMBER: _ClassVar[int]
        Y_FIELD_NUMBER: _ClassVar[int]
        x: float
        y: float
        def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...
    class Box(_message.Message):
        __slots__ = ("x1", "y1", "x2", "y2")
        X1_FIELD_NUMBER: _ClassVar[int]
        Y1_FIELD_NUMBER: _ClassVar[int]
        X2_FIELD_NUMBER: _ClassVar[int]
        Y2_FIELD_NUMBER: _ClassVar[int]
        x1: float
        y1: float
        x2: float
        y2: float
        def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...
    class Detection(_message.Message):
        __slots__ = ("label", "score", "box", "keypoints", "polygon", "track_id", "text", "text_confidence")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        SCORE_FIELD_NUMBER: _ClassVar[int]
        BOX_FIELD_NUMBER: _ClassVar[int]
        KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
        POLYGON_FIELD_NUMBER: _ClassVar[int]
        TRACK_ID_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        TEXT_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
        label: str
        score: float
        box: InferenceResponse.Box
        keypoints: _containers.RepeatedCompositeFieldContainer[InferenceResponse.Point]
        polygon: _containers.RepeatedCompositeFieldContainer[InferenceResponse.Point]
        track_id: int
        text: str
        text_confidence: float
        def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Union[InferenceResponse.Box, _Mapping]] = ..., keypoints: _Optional[_Iterable[_Union[InferenceResponse.Point, _Mapping]]] = ..., polygon: _Optional[_Iterable[_Union[InferenceResponse.Point, _Mapping]]] = ..., track_id: _Optional[int] = ..., text: _Optional[str] = ..., text_confidence: _Optional[float] = ...) -> None: ...
    class ClassScore(_message.Message):
        __slots__ = ("index", "label", "score")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        LABEL_FIELD_NUMBER: _ClassVar[int]
        SCORE_FIELD_NUMBER: _ClassVar[int]
        index: int
        label: str
        score: float
        def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...
    class Timing(_message.Message):
        __slots__ = ("queue_ms", "inference_ms", "total_ms")
        QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
        INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
        queue_ms: float
        inference_ms: float
        total_ms: float
        def __init__(self, queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    label: int
    status: InferenceResponse.Status
    seq: int
    model: str
    width: int
    height: int
    detections: _containers.RepeatedCompositeFieldContainer[InferenceResponse.Detection]
    classes: _containers.RepeatedCompositeFieldContainer[InferenceResponse.ClassScore]
    timing: InferenceResponse.Timing
    reason: str
    code: str
    message: str
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ..., status: _Optional[_Union[InferenceResponse.Status, str]] = ..., seq: _Optional[int] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[InferenceResponse.Detection, _Mapping]]] = ..., classes: _Optional[_Iterable[_Union[InferenceResponse.ClassScore, _Mapping]]] = ..., timing: _Optional[_Union[InferenceResponse.Timing, _Mapping]] = ..., reason: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...
