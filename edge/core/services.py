"""Typed application state: the services a running gateway owns, under one `web.AppKey`."""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from edge.access.ratelimit import StreamQuota
from edge.core.scheduler import Scheduler
from edge.core.stream import Stream
from edge.metrics import Metrics
from edge.models.repository import Repository
from edge.settings import Settings
from edge.sharedmem import Cluster
from edge.sinks.publisher import Publisher


class Session(Protocol):
    """What the gateway asks of an open stream, whatever its transport (each is an
    edge.core.session.StreamSession)."""

    stream: Stream | None

    async def goaway(self, retry_after_ms: int) -> None:
        """Drain: answer every frame taken, say goaway, close as "going away"."""
        ...


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    repo: Repository
    scheduler: Scheduler
    #: model loading and other slow one-off work, never the frame workers
    background: ThreadPoolExecutor
    #: this serving process's place among the others, and the state they share
    cluster: Cluster
    #: streams open in the whole gateway, at most max_streams
    streams: StreamQuota
    #: this process's result sinks (MQTT, NATS, ...), none unless configured
    publisher: Publisher
    #: streams open per client address in the whole gateway, at most max_streams_per_client
    client_streams: StreamQuota | None = None
    sessions: weakref.WeakSet[Session] = field(default_factory=weakref.WeakSet)
    draining: bool = False
    #: the event loop lags behind (edge.process.loopmonitor): new streams are refused until it
    # catches up
    saturated: bool = False
    #: set to rescan the model repository now (SIGHUP)
    reload: asyncio.Event = field(default_factory=asyncio.Event)

    def not_ready(self) -> list[str]:
        """Why the gateway is not ready, or nothing: what /readyz, KServe's health calls and
        gRPC's health service all answer. This process's own readiness is published to the
        others first (the event-loop monitor also does so on its beat), so once one process
        has said ready, every other one agrees that this one is."""
        here = self.repo.ready and not self.draining
        self.cluster.shared.me["ready"] = int(here)
        if self.draining:
            return ["draining"]
        reasons = [] if here else self.repo.not_ready_reasons()
        return reasons + self.cluster.not_ready()  # the other serving processes, if any

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.cluster.shared.me["streams"] = len(self.sessions)  # the supervisor's load figure

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self.cluster.shared.me["streams"] = len(self.sessions)


SERVICES = web.AppKey("services", Services)
