"""NATS sinks (`nats://`) through nats-py; `?jetstream=1` publishes to JetStream.

Core NATS: a batch is written, then one PING/PONG round trip (`flush`) confirms the server
has read it. JetStream: every message of the batch is published at once and each waits for its
acknowledgement; a stream must capture the subjects (docs/sinks.md), or every publish fails, so
the sink checks at connect that one does and does not count as connected until then.
The client's own reconnection is off: the owner reconnects, with its backoff, as for MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge.sinks.base import Outgoing, Sink, SinkConfigError, Target

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("edge.sinks.nats")


class NatsSink(Sink):
    separator = "."
    ports = {"nats": 4222}
    options = {"jetstream": "0 or 1"}
    requires = "nats"

    def __init__(self, target: Target, *, timeout: float, name: str) -> None:
        super().__init__(target, timeout=timeout, name=name)
        self._nc: Client | None = None

    @classmethod
    def check(cls, target: Target) -> None:
        super().check(target)
        if target.options.get("jetstream", "0") not in ("0", "1"):
            raise SinkConfigError("jetstream must be 0 or 1")

    async def connect(self) -> None:
        from nats.aio.client import Client

        t = self.target
        host = f"[{t.host}]" if ":" in t.host else t.host
        self._nc = nc = Client()
        await nc.connect(
            servers=[f"nats://{host}:{t.port}"],  # the credentials go apart, never in a URL
            user=t.user,
            password=t.password,
            name=self.name,
            allow_reconnect=False,
            connect_timeout=max(1, round(self.timeout)),
            ping_interval=max(5, round(self.timeout * 3)),
            max_outstanding_pings=2,
            error_cb=self._on_error,  # the owner logs failures; the client's default is noisy
        )
        if t.flag("jetstream"):
            await self._check_streams(nc)

    async def _check_streams(self, nc: Client) -> None:
        """Raise, saying what to create, unless a JetStream stream captures every subject
        this sink publishes to (results, and drop notices with `drops=1`)."""
        from nats.js.errors import NotFoundError, ServiceUnavailableError

        head = self.target.prefix.replace("/", ".")
        kinds = ("results", "dropped") if self.target.drops else ("results",)
        js = nc.jetstream(timeout=self.timeout)
        for kind in kinds:
            try:
                await js.find_stream_name_by_subject(f"{head}.{kind}.>")
            except NotFoundError:
                raise ConnectionError(
                    f"no JetStream stream captures {head}.{kind}.>; create one, e.g. "
                    f"`nats stream add EDGE --subjects '{head}.>'`"
                ) from None
            except ServiceUnavailableError:
                raise ConnectionError(
                    "the server has no JetStream: start nats-server with -js, or drop "
                    "?jetstream=1 to publish to core NATS"
                ) from None

    async def _on_error(self, e: Exception) -> None:
        log.debug("sink %s: %r", self.target.label, e)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise ConnectionError("not connected")
        if self.target.flag("jetstream"):
            js = nc.jetstream(timeout=self.timeout)
            await asyncio.gather(*(js.publish(subject, payload) for subject, payload in batch))
            return
        for subject, payload in batch:
            await nc.publish(subject, payload)
        await nc.flush(timeout=self.timeout)  # type: ignore[arg-type]

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
