"""Logging: JSON lines for machines, readable lines on a terminal. Never frame bytes or tokens."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

#: structured fields a log call may pass with `extra=`
_FIELDS = ("session", "model", "transport", "code", "sink")

#: Where a token can turn up in a line someone else wrote (aiohttp's access log prints the
#: query string; its WebSocket handshake warning prints the offered subprotocols): the query
#: parameter, a bearer header or subprotocol, an auth message, anything shaped like a JWT.
_SECRETS = [
    (re.compile(r"(?i)(token=)[^&\s\"'#;,]+"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer[.\s]\s*)[A-Za-z0-9\-._~+/]+=*"), r"\1[redacted]"),
    (re.compile(r"(?i)([\"']token[\"']\s*:\s*[\"'])[^\"']*"), r"\1[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), "[redacted-jwt]"),
]


#: characters that could end a line or rewrite one on a terminal: C0 and C1 controls (but
#: tab), DEL, and Unicode's line and paragraph separators
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """`text` on one line: each control character as its Python escape (`\\n`, `\\x1b`), so
    nothing a client sent can forge a log line or a terminal sequence."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def redact(text: str) -> str:
    """`text` with anything that looks like a token replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line, its message (and args) escaped; a traceback after it keeps its lines."""
        record.message = escape(record.message)
        return redact(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                event[key] = value
        if record.exc_info:
            event["exc"] = redact(self.formatException(record.exc_info))
        # ASCII only: every control character, C1 and Unicode's separators too, as \uXXXX
        return json.dumps(event)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Off anyway (edge.cli runs without an access log); if turned on, lines are redacted.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
