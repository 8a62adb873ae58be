"""A client at the socket level, for the misbehaviour a library client cannot produce:
upgrade requests sent a byte at a time, half-sent frames, connections reset without a close."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from urllib.parse import urlsplit

from tests.pace import deadline


def upgrade_request(url: str, path: str = "/v1/stream") -> bytes:
    host = urlsplit(url).netloc
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def open_ws(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgraded by hand; the server's hello is left unread."""
    reader, writer = await connect(url)
    writer.write(upgrade_request(url))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline())
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked, final client frame (binary by default)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def reset(writer: asyncio.StreamWriter) -> None:
    """Vanish: drop the connection with a TCP reset, no close frame, no FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
