"""The WebSocket client that follows credits, as edge.client does (docs/protocol.md,
"Clients"): it asks for credits after hello, sends no frame until the gateway's credit
arrives, and then keeps at most that many frames unanswered. A camera tick that finds no
credit free is skipped at the source and counted (`Link.skipped`), never queued: the newest
frame goes out when a credit frees. Against it, `WebSocketLink` sends every tick, as a client
that knows nothing of credits does, and the gateway drops what it cannot serve."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from edge.bench.link import Link, WebSocketLink

#: how long the gateway may take to answer the config message with its credit
CREDIT_WITHIN_S = 30.0


class CreditWebSocketLink(WebSocketLink):
    """`/v1/stream` with credit flow control: `send` skips a frame while no credit is free."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool], window: int) -> None:
        super().__init__(ws)
        self.window = window  # frames the gateway lets us have unanswered
        self.unanswered: set[int] = set()

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, model: str) -> Link:
        link = await WebSocketLink.open(http, url, model)
        assert isinstance(link, WebSocketLink)
        ws = link.ws
        await ws.send_str(json.dumps({"type": "config", "credits": True}))
        window = await _credit(ws)
        return cls(ws, window)

    async def send(self, frame: bytes) -> None:
        if len(self.unanswered) >= self.window:
            self.skipped += 1  # no credit free: this tick's frame is never sent
            return
        self.unanswered.add(len(self.sent_at))
        self.sent_at.append(time.monotonic())
        await self.ws.send_bytes(frame)

    async def recv(self) -> dict[str, Any]:
        msg = await super().recv()
        kind = msg.get("type")
        if kind == "credit":
            self.window = int(msg["n"])
        elif "seqs" in msg:
            self.unanswered.difference_update(msg["seqs"])
        elif "seq" in msg:
            self.unanswered.discard(msg["seq"])
        return msg


async def _credit(ws: aiohttp.ClientWebSocketResponse[bool]) -> int:
    """The window of the gateway's first credit notice (its config answer comes first); 1
    when it answers the config with an error instead (a gateway without credits)."""
    deadline = time.monotonic() + CREDIT_WITHIN_S
    while True:
        msg = await ws.receive(timeout=max(0.0, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"no credit but {msg.type.name} {msg.data!r}")
        reply = json.loads(msg.data)
        if reply.get("type") == "credit":
            return int(reply["n"])
        if reply.get("type") == "error":
            return 1
