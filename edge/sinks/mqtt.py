"""MQTT sinks (`mqtt://`, `mqtts://` with TLS) through aiomqtt.

Options: `qos` (0 or 1), `retain` (0 or 1), `client_id` (a prefix: the serving process's number
is appended, as each process holds its own connection), `ca` (a CA file to trust, mqtts).
A batch's messages are handed to the client 32 at a time, in order (a few writes and loop turns
a batch, not one per message); the batch returns once each is written to the socket (QoS 0)
or acknowledged (QoS 1, as many in flight as the client allows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge.sinks.base import Outgoing, Sink, SinkConfigError, Target

if TYPE_CHECKING:
    import aiomqtt

#: the client library's own log: its notices (a forced disconnect after a refused connect)
#: repeat what the sink's owner logs once, so only its errors are let through
_client_log = logging.getLogger("edge.sinks.mqtt.client")
_client_log.setLevel(logging.ERROR)
#: messages handed to the client at once: each publish looks through every pending one
_AT_ONCE = 32


class MqttSink(Sink):
    separator = "/"
    ports = {"mqtt": 1883, "mqtts": 8883}
    options = {
        "qos": "0 or 1",
        "retain": "0 or 1",
        "client_id": "a client id prefix",
        "ca": "a CA file (mqtts)",
    }
    requires = "aiomqtt"

    def __init__(self, target: Target, *, timeout: float, name: str) -> None:
        super().__init__(target, timeout=timeout, name=name)
        self._qos = int(target.options.get("qos", "0"))
        self._retain = target.flag("retain")
        self._client: aiomqtt.Client | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lost = False

    @classmethod
    def check(cls, target: Target) -> None:
        super().check(target)
        for name in ("qos", "retain"):
            if target.options.get(name, "0") not in ("0", "1"):
                raise SinkConfigError(f"{name} must be 0 or 1 (QoS 2 is not offered)")
        ca = target.options.get("ca")
        if ca is not None and (target.scheme != "mqtts" or not Path(ca).is_file()):
            raise SinkConfigError("ca is the path of a CA file, and only for mqtts://")

    async def connect(self) -> None:
        import aiomqtt

        t = self.target
        tls = None
        if t.scheme == "mqtts":
            tls = ssl.create_default_context(cafile=t.options.get("ca"))
        client_id = t.options.get("client_id")
        self._lost = False
        self._client = aiomqtt.Client(
            t.host,
            t.port,
            username=t.user,
            password=t.password,
            identifier=f"{client_id}-{self.name}" if client_id else None,
            timeout=self.timeout,
            keepalive=max(5, int(self.timeout * 3)),
            tls_context=tls,
            logger=_client_log,
        )
        self._client.pending_calls_threshold = _AT_ONCE  # more is our choice, not a leak
        await self._client.__aenter__()
        self._watch = asyncio.create_task(self._watch_connection(self._client))

    async def _watch_connection(self, client: aiomqtt.Client) -> None:
        """Nothing is subscribed: the message iterator only ends when the connection does."""
        import aiomqtt

        with contextlib.suppress(aiomqtt.MqttError):
            async for _ in client.messages:
                pass
        self._lost = True

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._lost

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        client = self._client
        if client is None or self._lost:
            raise ConnectionError("not connected")
        retain, qos = self._retain, self._qos
        for i in range(0, len(batch), _AT_ONCE):
            chunk = batch[i : i + _AT_ONCE]
            await asyncio.gather(*(client.publish(t, p, qos=qos, retain=retain) for t, p in chunk))

    async def close(self) -> None:
        client, self._client = self._client, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if client is not None:
            # also after a failed connect: it closes the socket and stops the client's task
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
