"""The wire schema, shared by every transport: one JSON text message per reply.

See docs/protocol.md. `JSON` is the wire (edge.frames.Wire) of the transports that speak it:
results and errors are encoded on worker threads (so the event loop only moves bytes), drop
notices and the small notices on the loop.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.frames import Answer, Dropped, Error, Notice, Result
from edge.sinks.base import MAX_TOPIC, TOPIC

_fast: Callable[[Any], bytes] | None
_FastError: type[Exception]
try:  # a dependency; where it is missing, the standard library's encoder does it all
    import orjson

    _fast, _FastError = orjson.dumps, orjson.JSONEncodeError
except ImportError:  # pragma: no cover - pyproject.toml installs it
    _fast, _FastError = None, TypeError

PROTOCOL = 1
_stdlib_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _dumps(obj: Any) -> str:
    """Compact JSON text; ValueError for NaN or an infinity (JSON has none). orjson's, three
    times faster, when its text holds no `null`: it writes NaN and the infinities as null, so
    text with one (or what it cannot encode at all) goes to the standard library's encoder,
    which refuses them and writes None as null."""
    if _fast is not None:
        try:
            text = _fast(obj)
        except _FastError:
            pass
        else:
            if b"null" not in text:
                return text.decode()
    return _stdlib_dumps(obj)


class ProtocolError(ValueError):
    """A control message the server cannot accept; answered with `bad_message`."""


def hello(session: str, model: str, max_frame_bytes: int, **extra: Any) -> str:
    return _dumps(
        {
            "type": "hello",
            "protocol": PROTOCOL,
            "session": session,
            "model": model,
            "max_frame_bytes": max_frame_bytes,
            **extra,
        }
    )


def result(r: Result) -> str:
    """A result message; ValueError if its payload holds NaN or an infinity (JSON has none)."""
    return _dumps(_result_fields(r))


def _result_fields(r: Result) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "result",
        "seq": r.seq,
        "model": r.model,
        "width": r.width,
        "height": r.height,
    }
    if r.outputs is not None:
        msg["outputs"] = arrays(r.outputs)
    else:
        msg.update(r.payload)
    timing = r.timing
    msg["timing"] = {
        "queue_ms": round(timing.queue_ms, 3),
        "inference_ms": round(timing.inference_ms, 3),
        "total_ms": round(timing.total_ms, 3),
    }
    return msg


def arrays(outputs: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Network outputs for a result's `outputs` (the raw form, whose client reads them as
    tensors): each as its dtype, shape and base64 bytes."""
    return [
        {
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "data": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii"),
        }
        for a in outputs
    ]


def dropped(seqs: Sequence[int], reason: str) -> str:
    if len(seqs) == 1:
        return _dumps({"type": "dropped", "seq": seqs[0], "reason": reason})
    return _dumps({"type": "dropped", "seqs": list(seqs), "reason": reason})


def error(seq: int | None, code: str, message: str) -> str:
    msg: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if seq is not None:
        msg["seq"] = seq
    return _dumps(msg)


def unary(answer: Answer) -> str:
    """The answer to a one-frame request, as its stream would have sent it but without the
    seq: the body of a /v1 infer call, the `result` output of a KServe pipeline model.
    ValueError for a payload that holds NaN or an infinity."""
    if isinstance(answer, Result):
        fields = _result_fields(answer)
        del fields["seq"]
        return _dumps(fields)
    if isinstance(answer, Error):
        return error(None, answer.code, answer.message)
    return _dumps({"type": "dropped", "reason": answer.reason})


class JsonWire:
    """docs/protocol.md's JSON text, one message per reply: the WebSocket's and the WebRTC
    data channel's wire (and the sinks' `reply`)."""

    def result(self, r: Result, /) -> str:
        return result(r)

    def error(self, e: Error, /) -> str:
        return error(e.seq, e.code, e.message)

    def dropped(self, d: Dropped, /) -> str:
        return dropped(d.seqs, d.reason)

    def notice(self, n: Notice, /) -> str:
        return message(n.type, **n.fields)


JSON = JsonWire()


def message(type_: str, **fields: Any) -> str:
    return _dumps({"type": type_, **fields})


@dataclass(frozen=True)
class Config:
    """A `config` control message; None means "leave as it is"."""

    threshold: float | None = None
    max_frame_age_ms: float | None = None
    clear_deadline: bool = False
    model: str | None = None
    credits: bool | None = None
    stats_every_s: float | None = None  # 0 turns periodic stats off
    publish: bool | None = None  # results to the sinks, or not
    topic: str | None = None  # the stream's topic suffix at the sinks
    clear_topic: bool = False  # `"topic": null`: back to the session id


@dataclass(frozen=True)
class Control:
    type: str
    config: Config | None = None


#: the keys a `config` message may carry besides its type
CONFIG_KEYS = (
    "threshold",
    "max_frame_age_ms",
    "model",
    "credits",
    "stats_every_s",
    "publish",
    "topic",
)
_CONFIG_KEYS = {"type", *CONFIG_KEYS}


def json_object(data: str | bytes, what: str, error: type[ValueError]) -> dict[str, Any]:
    """A client's JSON text as an object, or `error` saying that `what` must be one."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise error(f"{what} must be JSON: {e}") from None
    if not isinstance(obj, dict):
        raise error(f"{what} must be a JSON object")
    return obj


def parse_control(text: str, max_bytes: int) -> Control:
    """Parse a client's text message, or raise ProtocolError saying what is wrong."""
    # characters first (cheap, bounds the encode), then the UTF-8 bytes the limit is about
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(f"control message longer than {max_bytes} bytes")
    obj = json_object(text, "a control message (an object with a 'type')", ProtocolError)
    kind = obj.get("type")
    if kind == "config":
        unknown = set(obj) - _CONFIG_KEYS
        if unknown:
            raise ProtocolError(
                f"unknown config keys {sorted(unknown)}; known: {sorted(_CONFIG_KEYS - {'type'})}"
            )
        threshold = _number(obj, "threshold", 0.0, 1.0)
        age = obj.get("max_frame_age_ms", ...)
        clear = age is None
        age_v = None if age is ... or age is None else _number(obj, "max_frame_age_ms", 1.0, 3.6e6)
        model = obj.get("model")
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 128):
            raise ProtocolError("model must be a model name, or name@version")
        credits = obj.get("credits")
        if credits is not None and not isinstance(credits, bool):
            raise ProtocolError("credits must be true or false")
        every = obj.get("stats_every_s")
        every_v = None
        if every is not None:
            every_v = 0.0 if every == 0 else _number(obj, "stats_every_s", 0.5, 3600.0)
        publish = obj.get("publish")
        if publish is not None and not isinstance(publish, bool):
            raise ProtocolError("publish must be true or false")
        topic = obj.get("topic", ...)
        clear_topic = topic is None
        if topic is ... or topic is None:
            topic = None
        elif not (isinstance(topic, str) and len(topic) <= MAX_TOPIC and TOPIC.fullmatch(topic)):
            raise ProtocolError(
                f"topic must be 1 to {MAX_TOPIC} letters, digits, - and _, in levels separated "
                "by / (no wildcards + # * >, no leading or trailing /), e.g. door-3; or null "
                "for the session id"
            )
        return Control(
            "config",
            Config(threshold, age_v, clear, model, credits, every_v, publish, topic, clear_topic),
        )
    if kind in ("stats", "ping"):
        return Control(kind)
    raise ProtocolError(f"unknown message type {kind!r}; known: config, stats, ping")


def _number(obj: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProtocolError(f"{key} must be a number")
    # ints are compared as they are: math.isfinite(10**400) raises OverflowError
    if isinstance(v, float) and not math.isfinite(v):
        raise ProtocolError(f"{key} must be a number")
    if not lo <= v <= hi:
        raise ProtocolError(f"{key} must be between {lo:g} and {hi:g}")
    return float(v)
