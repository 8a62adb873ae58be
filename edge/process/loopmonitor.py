"""The serving process's pulse: how far its event loop lags, what it reports to the others.

Every `PERIOD_S` it sleeps and measures how late it woke: that lag is the time every socket
of this process waited unread, and frames sitting unread in kernel buffers are where
latest-frame-wins cannot see them. When the median lag of the last second passes
`max_loop_lag_ms` (a loop behind all the time, not one slow moment such as a collection or a
model loading), the process counts as saturated: it refuses new streams with `503 busy` and
the supervisor hands new connections to the other processes, until the median falls under
half the limit. It also
writes this process's row of the shared state (ready, saturated) and its memory gauges, and
publishes the per-frame metrics this process gathered (edge/metrics/buffer.py): every
FLUSH_EVERY_S, and within a beat when a scrape in any process asks (`flush_gen`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
from collections import deque
from collections.abc import AsyncIterator
from contextlib import suppress

from aiohttp import web

from edge.core.services import SERVICES, Services
from edge.metrics.buffer import FLUSH_EVERY_S

log = logging.getLogger("edge.pulse")

PERIOD_S = 0.05
WINDOW = 20  # periods: the worst lag of the last second decides
FLUSH_EVERY = max(1, round(FLUSH_EVERY_S / PERIOD_S))  # periods between metric flushes
_PAGE = os.sysconf("SC_PAGE_SIZE")


async def pulse(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the pulse task, started with the app and awaited at its end."""
    task = asyncio.create_task(beat(app[SERVICES]), name="pulse")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def beat(services: Services) -> None:
    loop = asyncio.get_running_loop()
    cluster, m = services.cluster, services.metrics
    process = str(cluster.index)
    lags: deque[float] = deque(maxlen=WINDOW)
    limit = services.settings.max_loop_lag_ms / 1000
    n = 0
    while True:
        t0 = loop.time()
        await asyncio.sleep(PERIOD_S)
        lags.append(max(0.0, loop.time() - t0 - PERIOD_S))
        typical = statistics.median(lags)
        if limit > 0:
            if not services.saturated and typical > limit:
                services.saturated = True
                log.warning(
                    "event loop %.0f ms behind (limit %.0f ms): refusing new streams",
                    typical * 1e3,
                    limit * 1e3,
                )
            elif services.saturated and typical < limit / 2:
                services.saturated = False
                log.info("event loop caught up (%.0f ms behind): taking streams", typical * 1e3)
        me = cluster.shared.me
        me["ready"] = int(services.repo.ready and not services.draining)
        me["saturated"] = int(services.saturated)
        n += 1
        asked = int(cluster.shared.header["flush_gen"])  # a scrape somewhere waits for us
        if n % FLUSH_EVERY == 0 or asked > me["flush_done"]:
            m.flush()
            me["flush_done"] = asked
        if n % WINDOW == 1:
            m.loop_lag.labels(process).set(max(lags))
            m.saturated.labels(process).set(int(services.saturated))
            rss = resident_bytes()
            me["rss"] = rss
            m.resident_bytes.labels(process).set(rss)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE
