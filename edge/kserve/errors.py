"""The protocol's one error: a kind that each transport maps to its own status, and a message
for the client (`{"error": message}` over REST, the status details over gRPC)."""

from __future__ import annotations

from edge.core.admission import Kind, Refusal

#: kind -> HTTP status
HTTP_STATUS = {
    "invalid": 400,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
}
#: an admission refusal's kind (edge.core.admission) as the protocol's
KIND_OF = {
    Kind.UNAVAILABLE: "unavailable",
    Kind.NOT_FOUND: "not_found",
    Kind.EXHAUSTED: "rate_limited",
    Kind.INVALID: "invalid",
}


class KServeError(Exception):
    """A request the gateway cannot answer with outputs; `kind` is one of HTTP_STATUS."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in HTTP_STATUS, kind
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.kind]


def invalid(message: str) -> KServeError:
    return KServeError("invalid", message)


def refused(refusal: Refusal) -> KServeError:
    """A refusal of the gateway's admission (edge.core.admission) as the protocol's error."""
    return KServeError(KIND_OF[refusal.kind], f"{refusal.reason}: {refusal.message}")
