"""A test client that speaks the stream protocol and keeps the books a client would keep."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.pace import deadline


@dataclass
class Books:
    """What one client observed: the reply for each seq, and when."""

    sent_at: dict[int, float] = field(default_factory=dict)
    replies: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)
    other: list[dict[str, Any]] = field(default_factory=list)
    hello: dict[str, Any] = field(default_factory=dict)

    def record(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        seqs = msg.get("seqs") if msg.get("type") == "dropped" and "seqs" in msg else None
        if seqs is None and "seq" in msg:
            seqs = [msg["seq"]]
        if not seqs:
            self.other.append(msg)
            return
        for s in seqs:
            self.replies.setdefault(s, []).append(msg)
            self.answered_at.setdefault(s, now)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for msgs in self.replies.values():
            for m in msgs:
                key = m["type"] if m["type"] != "dropped" else "dropped:" + m["reason"]
                out[key] = out.get(key, 0) + 1
        return out

    def unanswered(self) -> list[int]:
        return sorted(set(self.sent_at) - set(self.replies))

    def answered_twice(self) -> list[int]:
        return sorted(s for s, m in self.replies.items() if len(m) > 1)

    def result_ages(self) -> list[tuple[float, float]]:
        """(time the result arrived, age of its frame then), in arrival order."""
        out = []
        for s, msgs in self.replies.items():
            if msgs[0]["type"] == "result":
                out.append((self.answered_at[s], self.answered_at[s] - self.sent_at[s]))
        return sorted(out)


async def open_stream(
    http: aiohttp.ClientSession, url: str, model: str | None = None, **kw: Any
) -> tuple[aiohttp.ClientWebSocketResponse, Books]:
    q = f"?model={model}" if model else ""
    ws = await http.ws_connect(url.replace("http", "ws", 1) + "/v1/stream" + q, **kw)
    books = Books()
    hello = await next_reply(ws)
    assert hello["type"] == "hello", hello
    books.hello = hello
    return ws, books


async def read_into(ws: aiohttp.ClientWebSocketResponse, books: Books) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            books.record(json.loads(msg.data))


async def next_reply(
    ws: aiohttp.ClientWebSocketResponse, within: float | None = None
) -> dict[str, Any]:
    """The next message, waiting at most `within` seconds (by default what one BlazeFace frame
    may take on this machine, tests/pace.py)."""
    within = deadline() if within is None else within
    try:
        msg = await asyncio.wait_for(ws.receive(), within)
    except asyncio.TimeoutError:
        raise AssertionError(f"no message from the server within {within:.1f} s") from None
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)  # type: ignore[no-any-return]
