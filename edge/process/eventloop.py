"""The event loop a serving process runs on: uvloop where it is installed and not turned off
(`uvloop` setting, docs/settings.md), else asyncio's own. Every transport (aiohttp's
WebSocket and HTTP, grpcio's aio server, aiortc) runs on both; uvloop costs the event loop
less per message (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("edge.loop")

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """`asyncio.run(main)`, on uvloop when `use_uvloop` and it is installed."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            log.debug("uvloop is not installed: asyncio's own event loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)
