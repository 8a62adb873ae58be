"""Load helpers shared by the overload and operations tests."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.wsclient import Books


async def blast(ws: aiohttp.ClientWebSocketResponse, books: Books, data: bytes,
                seconds: float, fps: float) -> None:  # fmt: skip
    """Send frames at `fps` (more than the model can run across all streams)."""
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < seconds:
        due = start + seq / fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        books.sent_at[seq] = time.monotonic()
        await ws.send_bytes(data)
        seq += 1
