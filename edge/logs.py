"""Logging: JSON lines for machines, readable lines on a terminal. Never frame bytes or tokens."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

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


def redact(text: str) -> str:
    """`text` with anything that looks like a token replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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
        return json.dumps(event, ensure_ascii=False)


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
