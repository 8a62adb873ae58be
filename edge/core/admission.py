"""Who may open a stream or send a request now: the one way in for every transport and protocol.

A refusal is data, written once here (`Refusal`: the reason a client and the
`edge_streams_refused` metric see, a message saying what to do, and a `Kind` that says which
status it is on each wire). Each wire says it its own way with one small function:
edge.transports.http.refusal_response (a status, `{"error", "message"}` and Retry-After; the
WebSocket upgrade, the WebRTC offer and `/v1` infer), edge.transports.grpc.calls.abort (a
status code and details `reason: message`; both gRPC services) and edge.kserve.errors.refused
(KServe REST's error body).

A stream is let in by an `Admission`: the checks in the order its transport can make them
(a gRPC stream learns its model from its first request, a WebRTC offer from its body), each
refusal counted once, the slots it took given back once. A unary request, on every transport
alike, is let in by `admit_request` (the gateway's state, then one frame of its client's
`max_fps_per_client`) and `request_route`. Which checks apply where is decided here, not in
the transports.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from edge.access import auth, ratelimit, tokens
from edge.access.ratelimit import Slot
from edge.core.services import Services
from edge.models.repository import Route, UnknownModel

#: seconds a client refused for now (Kind.UNAVAILABLE, Kind.EXHAUSTED) is told to wait
RETRY_AFTER_S = 1


class Kind(enum.Enum):
    """What a refusal means, whatever the wire: each wire has one status for each kind."""

    UNAVAILABLE = "unavailable"  # the gateway cannot take it now; try again soon
    NOT_FOUND = "not_found"  # no such model
    EXHAUSTED = "exhausted"  # a quota is used up; try again once something closed
    INVALID = "invalid"  # the request itself is wrong


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str
    kind: Kind = Kind.UNAVAILABLE

    @property
    def retry_after_s(self) -> int | None:
        """How long to wait before trying again, when waiting may help."""
        return RETRY_AFTER_S if self.kind in (Kind.UNAVAILABLE, Kind.EXHAUSTED) else None


DRAINING = Refusal("draining", "the gateway is shutting down; reconnect")
NOT_READY = Refusal("not_ready", "models are still loading")
BUSY = Refusal("busy", "this gateway process is behind; retry")
RATE_LIMITED = Refusal(
    "rate_limited", "this client is over its frame budget (max_fps_per_client)", Kind.EXHAUSTED
)


def max_streams(limit: int) -> Refusal:
    return Refusal("max_streams", f"the gateway serves at most {limit} streams")


def unknown_model(e: UnknownModel) -> Refusal:
    return Refusal("unknown_model", str(e), Kind.NOT_FOUND)


class NotAdmitted(Exception):
    """Raised by the checks below; the transport answers `refusal` in its wire's form."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.reason}: {refusal.message}")
        self.refusal = refusal


def gate(services: Services) -> Refusal | None:
    """Why nothing new may start in this process now (draining, not ready, busy), or None."""
    if services.draining:
        return DRAINING
    if not services.repo.ready:
        return NOT_READY
    if services.saturated:
        return BUSY
    return None


# -- streams -----------------------------------------------------------------------------------
class Admission:
    """One stream's way in on `transport`. Each check raises NotAdmitted with its refusal
    counted (`edge_streams_refused{transport, reason}`); the slots taken are the stream's until
    `release` (once; also on leaving a `with` block)."""

    def __init__(self, services: Services, transport: str) -> None:
        self.services = services
        self.transport = transport
        self._slots: list[Slot] = []

    def counted(self, refusal: Refusal) -> Refusal:
        """`refusal`, counted as this stream's."""
        self.services.metrics.streams_refused.labels(self.transport, refusal.reason).inc()
        return refusal

    def refuse(self, refusal: Refusal) -> NotAdmitted:
        """Count `refusal`; the exception to raise for it."""
        return NotAdmitted(self.counted(refusal))

    def check_gateway(self) -> None:
        refusal = gate(self.services)
        if refusal is not None:
            raise self.refuse(refusal)

    def check_model(self, asked: str | Route) -> Route:
        """The route of what the client asked for (a model name, name@version), checked to
        name a model this gateway serves."""
        try:
            return self.services.repo.route(asked).route
        except UnknownModel as e:
            raise self.refuse(unknown_model(e)) from None

    def take_stream_slot(self, client: str | None = None) -> None:
        """A slot of the whole gateway's max_streams, not only this process's, and one of
        the `client` address's max_streams_per_client. Taken only once the client is
        authenticated (a token-less WebSocket, after its auth message)."""
        settings = self.services.settings
        per_client = self.services.client_streams if client is not None else None
        if client is not None and per_client is not None and per_client.limit > 0:
            slot = per_client.acquire(client)
            if slot is None:
                raise self.refuse(
                    Refusal(
                        "max_streams_per_client",
                        f"this address holds {per_client.limit} streams already; close one",
                    )
                )
            self._slots.append(slot)
        slot = self.services.streams.acquire("*")
        if slot is None:
            raise self.refuse(max_streams(settings.max_streams))
        self._slots.append(slot)

    def take_token_slot(self, guard: auth.Guard, principal: tokens.Principal) -> None:
        """A slot of the principal's stream quota (max_streams_per_token)."""
        try:
            self._slots.append(auth.take_stream_slot(guard, principal))
        except tokens.Refused as e:
            self.services.metrics.auth_refused.labels(e.reason).inc()
            raise self.refuse(Refusal(e.reason, e.message, Kind.EXHAUSTED)) from None

    def hold(self, slot: Slot | None) -> None:
        """Keep a slot taken elsewhere (the request's token slot) until `release`."""
        if slot is not None:
            self._slots.append(slot)

    def release(self) -> None:
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.release()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


# -- unary requests ----------------------------------------------------------------------------
def admit_request(
    services: Services, transport: str, remote: str | None
) -> ratelimit.ClientRequest:
    """Let a unary request of the client at `remote` in on `transport` (the same checks on
    every transport): the gateway's state (`gate`), then one frame of the client's budget.
    Its hold is the request's until the end of a `with` block on it; NotAdmitted (not counted
    as a refused stream; a request over the budget is counted as a rate-limited frame)."""
    refusal = gate(services)
    if refusal is not None:
        raise NotAdmitted(refusal)
    rate = services.settings.max_fps_per_client
    hold = ratelimit.request(services.cluster.shared, rate, remote, time.monotonic())
    if hold is None:
        services.metrics.rate_limited.labels(transport, "client").inc()
        raise NotAdmitted(RATE_LIMITED)
    return hold


def request_route(services: Services, name: str) -> Route:
    """The route of a unary request for model `name` (`name@version`), or NotAdmitted."""
    try:
        return services.repo.route(name).route
    except UnknownModel as e:
        raise NotAdmitted(unknown_model(e)) from None
