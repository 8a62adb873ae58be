"""When to try again: the reconnect rule the dashboard (edge/web/app.js) and this client share
(docs/protocol.md, "Clients")."""

from __future__ import annotations

import random

#: the first wait after a failure; it doubles with each failure in a row, up to MAX_S
FIRST_S = 0.5
MAX_S = 15.0
#: each wait is scaled by a random factor in [1 - JITTER, 1 + JITTER], so that many devices
#: cut off together do not come back together
JITTER = 0.2
#: a connection that stayed up this long starts the doubling over
STEADY_S = 5.0


class Backoff:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self, at_least_s: float = 0.0) -> float:
        """Seconds to wait before the next attempt: the backoff, or what the gateway asked
        for (Retry-After, goaway's retry_after_ms) when that is longer."""
        wait = min(MAX_S, FIRST_S * 2**self.failures)
        wait *= 1 + self._rng.uniform(-JITTER, JITTER)
        self.failures += 1
        return max(at_least_s, wait)

    def connected_for(self, seconds: float) -> None:
        """A connection ended after `seconds` up: long enough, and the next wait is short."""
        if seconds >= STEADY_S:
            self.failures = 0
