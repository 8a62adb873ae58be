"""What every result sink is: a parsed URL (`Target`) and a client with three verbs.

A sink kind (MQTT, NATS, a plugin's Kafka) is a `Sink` subclass: `connect`, `publish` a batch
of (topic, payload) pairs, `close`. It knows nothing of queues, retries or metrics: its owner
(edge/sinks/runner.py) calls it from one task, with a timeout around every call, and
reconnects it when a call fails. docs/sinks.md says how to add a kind.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

#: one topic level: what a prefix's and a stream's topic levels may be made of
LEVEL = r"[A-Za-z0-9_-]+"
#: a topic (prefix or a stream's suffix): levels separated by `/`, no wildcard of MQTT
#: (`+`, `#`) or NATS (`*`, `>`), no empty level, so no leading or trailing separator
TOPIC = re.compile(rf"{LEVEL}(/{LEVEL})*")
#: the longest topic a stream may set for itself
MAX_TOPIC = 64

#: a message on its way to a broker: the topic (in the broker's own separators) and the bytes
Outgoing = tuple[str, bytes]


class SinkConfigError(ValueError):
    """A sink URL the gateway cannot use; the message names the sink and how to fix it."""


@dataclass(frozen=True)
class Target:
    """A sink URL taken apart. `label` names it in logs and metrics: no user, no password."""

    scheme: str
    host: str
    port: int
    #: topic prefix, levels separated by `/` (the URL's path; `edge` when it has none)
    prefix: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: the query's options (`qos=1`, `jetstream=1`, ...), the common `drops` taken out
    options: Mapping[str, str] = field(default_factory=dict)
    #: also publish a message for every drop notice (`?drops=1`)
    drops: bool = False

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.prefix}"

    def flag(self, name: str) -> bool:
        return self.options.get(name, "0") == "1"


class Sink(abc.ABC):
    """One connection to one broker. Called from one task at a time, never concurrently."""

    #: the separator of topic levels on this broker (`/` for MQTT, `.` for NATS)
    separator: ClassVar[str] = "/"
    #: the port each of the kind's URL schemes defaults to
    ports: ClassVar[Mapping[str, int]]
    #: the query options this kind takes, each with what it may be (shown in errors)
    options: ClassVar[Mapping[str, str]] = {}
    #: the Python package the kind's client comes from, checked when settings are parsed
    requires: ClassVar[str | None] = None

    def __init__(self, target: Target, *, timeout: float, name: str) -> None:
        """`timeout` bounds each broker round trip; `name` tells brokers which gateway
        process this is (client names, connection names)."""
        self.target = target
        self.timeout = timeout
        self.name = name

    @classmethod
    def check(cls, target: Target) -> None:
        """Raise SinkConfigError for an option value this kind cannot use (a kind checks its
        own options after calling this)."""
        for name, value in target.options.items():
            if not value:
                raise SinkConfigError(f"{name} needs a value ({cls.options.get(name, '')})")

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and authenticate; raise on failure (the owner retries with backoff)."""

    @abc.abstractmethod
    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Hand every message of `batch` to the broker; raise if the connection failed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection, whatever state it is in; never raises. Idempotent."""

    @property
    def connected(self) -> bool:
        """False once the connection is known to be lost (checked while idle)."""
        return True
