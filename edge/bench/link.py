"""The interface every bench client implements (`Link`: one stream, frames out, replies in),
and the WebSocket's. The openers by transport name are in edge.bench.links."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

import aiohttp


class EndOfStream(Exception):
    """The server closed the stream: no more replies will come."""


class TransportUnavailable(Exception):
    """This build cannot drive the transport asked for (the message says why)."""


class Link(ABC):
    """One stream to a server: frames out, replies (the protocol's JSON messages) in.

    `sent_at[seq]` is when frame `seq` left the client (`time.monotonic()`), as the server
    numbers frames; `skipped` counts frames the link replaced at the source before they left
    (a transport that paces itself, as a video track does, takes only the newest)."""

    def __init__(self) -> None:
        self.sent_at: list[float] = []
        self.skipped = 0

    @abstractmethod
    async def send(self, frame: bytes) -> None:
        """Offer one encoded frame (JPEG)."""

    @abstractmethod
    async def recv(self) -> dict[str, Any]:
        """The next reply; EndOfStream once the server has closed the stream."""

    @abstractmethod
    async def close(self) -> None:
        """Hang up (idempotent)."""


class WebSocketLink(Link):
    """`/v1/stream`: every binary message is a frame, every text message a reply."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        super().__init__()
        self.ws = ws

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, model: str) -> Link:
        ws_url = url.replace("http", "ws", 1) + "/v1/stream"
        ws = await http.ws_connect(ws_url, params={"model": model}, max_msg_size=0)
        hello = await ws.receive()
        if hello.type != aiohttp.WSMsgType.TEXT or json.loads(hello.data)["type"] != "hello":
            await ws.close()
            raise ConnectionError(f"{ws_url}: no hello but {hello.type.name} {hello.data!r}")
        return cls(ws)

    async def send(self, frame: bytes) -> None:
        self.sent_at.append(time.monotonic())
        await self.ws.send_bytes(frame)

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                return dict(json.loads(msg.data))
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                raise EndOfStream

    async def close(self) -> None:
        await self.ws.close()
