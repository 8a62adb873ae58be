"""What the gateway says, as typed objects (docs/protocol.md), parsed from its JSON text messages.

Every reply keeps the message it came from in `raw`. The client adds what only it knows:
`frame` (the frame's index in the source, not the connection's `seq`), `connection` (which
connection, counted from 1) and, for results, `latency_ms` (frame sent to result read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timing:
    """The gateway's own clock for one result, in milliseconds."""

    #: from the frame's arrival to a worker taking it
    queue_ms: float
    #: the model run (for the whole batch the frame ran in)
    inference_ms: float
    #: from arrival to the result ready
    total_ms: float


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float] | None = None
    keypoints: tuple[tuple[float, float], ...] = ()
    polygon: tuple[tuple[float, float], ...] = ()
    #: a tracked model's: the same object across the stream's frames (docs/models.md)
    track_id: int | None = None
    #: what a reading model (`ocr`) read in the region, and how sure it is
    text: str | None = None
    text_confidence: float | None = None


@dataclass(frozen=True)
class Classification:
    """One class of a classification result: `index` into the network's output, `label`
    from the model's labels (the index as text when it has none)."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Reply:
    """Any message from the gateway; `raw` is the JSON object as received."""

    raw: dict[str, Any] = field(repr=False, compare=False)
    connection: int = 0

    @property
    def type(self) -> str:
        return str(self.raw.get("type", ""))

    def as_json(self) -> dict[str, Any]:
        """The message plus what the client knows about it: one line of `edge stream --out`."""
        return {**self.raw, "connection": self.connection}


@dataclass(frozen=True)
class Hello(Reply):
    session: str = ""
    model: str = ""
    max_frame_bytes: int = 0


@dataclass(frozen=True)
class Result(Reply):
    seq: int = 0
    frame: int = -1
    model: str = ""
    width: int = 0
    height: int = 0
    detections: tuple[Detection, ...] = ()
    classes: tuple[Classification, ...] = ()
    timing: Timing | None = None
    latency_ms: float | None = None
    #: the encoded picture this result is about (set by the session; for drawing)
    image: bytes | None = field(default=None, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        frame = self.frame if self.frame >= 0 else None  # None: not known (WebRTC)
        return {**super().as_json(), "frame": frame, "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class Dropped(Reply):
    """Frames not run, and why. Reasons from the gateway are in docs/protocol.md; the client
    adds `lost`: frames sent on a connection that ended before their reply came."""

    seqs: tuple[int, ...] = ()
    frames: tuple[int, ...] = ()
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "seqs": list(self.seqs), "frames": list(self.frames)}


@dataclass(frozen=True)
class Error(Reply):
    """A frame's error (`seq` set) or a control message's (`seq` None)."""

    code: str = ""
    message: str = ""
    seq: int | None = None
    frame: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {**super().as_json(), "frame": self.frame}


@dataclass(frozen=True)
class Credit(Reply):
    n: int = 1


@dataclass(frozen=True)
class Goaway(Reply):
    retry_after_ms: int = 0


@dataclass(frozen=True)
class Stats(Reply):
    received: int = 0
    processed: int = 0
    dropped: int = 0
    errors: int = 0


#: everything else (config, pong, types a newer gateway may add) stays a plain Reply


def parse(text: str, connection: int = 0) -> Reply:
    """One text message from the gateway; raises ValueError when it is not a JSON object."""
    msg = json.loads(text)
    if not isinstance(msg, dict):
        raise ValueError("a gateway message is a JSON object")
    kind = msg.get("type")
    if kind == "result":
        return Result(
            msg,
            connection,
            seq=int(msg["seq"]),
            model=str(msg.get("model", "")),
            width=int(msg.get("width", 0)),
            height=int(msg.get("height", 0)),
            detections=tuple(_detection(d) for d in msg.get("detections", ())),
            classes=tuple(
                Classification(int(c["index"]), str(c["label"]), float(c["score"]))
                for c in msg.get("classes", ())
            ),
            timing=Timing(**{k: float(v) for k, v in msg["timing"].items()})
            if isinstance(msg.get("timing"), dict)
            else None,
        )
    if kind == "dropped":
        seqs = msg["seqs"] if "seqs" in msg else [msg["seq"]]
        return Dropped(msg, connection, seqs=tuple(int(s) for s in seqs), reason=msg["reason"])
    if kind == "error":
        seq = msg.get("seq")
        return Error(
            msg,
            connection,
            code=str(msg.get("code", "")),
            message=str(msg.get("message", "")),
            seq=None if seq is None else int(seq),
        )
    if kind == "hello":
        return Hello(
            msg,
            connection,
            session=str(msg.get("session", "")),
            model=str(msg.get("model", "")),
            max_frame_bytes=int(msg.get("max_frame_bytes", 0)),
        )
    if kind == "credit":
        return Credit(msg, connection, n=max(1, int(msg.get("n", 1))))
    if kind == "goaway":
        return Goaway(msg, connection, retry_after_ms=max(0, int(msg.get("retry_after_ms", 0))))
    if kind == "stats":
        return Stats(
            msg,
            connection,
            **{k: int(msg.get(k, 0)) for k in ("received", "processed", "dropped", "errors")},
        )
    return Reply(msg, connection)


def _detection(d: dict[str, Any]) -> Detection:
    box, track_id, text = d.get("box"), d.get("track_id"), d.get("text")
    confidence = d.get("confidence") if text is not None else None
    return Detection(
        label=str(d.get("label", "")),
        score=float(d.get("score", 0.0)),
        box=None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        keypoints=tuple((float(x), float(y)) for x, y in d.get("keypoints", ())),
        polygon=tuple((float(x), float(y)) for x, y in d.get("polygon", ())),
        track_id=None if track_id is None else int(track_id),
        text=None if text is None else str(text),
        text_confidence=None if confidence is None else float(confidence),
    )
