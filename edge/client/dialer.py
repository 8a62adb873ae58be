"""Which gateway to connect to next, and when (docs/protocol.md, "Clients"): the URLs are
replicas taken in turn, refusals are waited out for their Retry-After, failures back off, a
goaway moves on to the next replica or waits the delay it names."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from edge.client.backoff import Backoff
from edge.client.errors import Refused, Unreachable
from edge.client.replies import Goaway
from edge.client.tally import Tally

#: opens one connection: (url, connection number) -> the connection, or raises ClientError
Open = Callable[[str, int], Awaitable[Any]]
#: told about each wait before another attempt: (why, seconds)
Announce = Callable[[str, float], Awaitable[None]]


class Dialer:
    def __init__(self, urls: list[str], backoff: Backoff, tally: Tally) -> None:
        self.urls, self.backoff, self.tally = urls, backoff, tally
        self._index = 0

    async def dial(self, open_one: Open, announce: Announce, *, first: bool) -> Any:
        """A connection, retrying refusals with Retry-After (and, unless this is the first
        connection to the only URL, unreachable gateways) with backoff. Raises the refusals
        that are final (401, 403, 404) and, for a first connection, an unreachable gateway."""
        while True:
            try:
                return await open_one(self.urls[self._index], self.tally.connections + 1)
            except Refused as e:
                if not e.retryable:
                    raise
                self.tally.refusals += 1
                wait = self.backoff.next(e.retry_after_s or 0.0)
                why = str(e)
            except Unreachable as e:
                if first and len(self.urls) == 1:
                    raise
                wait = self.backoff.next()
                why = str(e)
            self._index = (self._index + 1) % len(self.urls)
            await announce(why, wait)
            await asyncio.sleep(wait)

    def after(self, goaway: Goaway | None) -> float:
        """Seconds to wait before connecting again once a connection has ended."""
        if goaway is not None and len(self.urls) > 1:
            self._index = (self._index + 1) % len(self.urls)
            return 0.0  # another gateway: go there now
        return self.backoff.next(goaway.retry_after_ms / 1000 if goaway else 0.0)
