"""Open files of a serving process: its limit raised at start, a connection cap kept below it.

Every connection is a descriptor. A process at its open-file limit cannot take a handed-over
connection (the kernel drops the descriptor and sets MSG_CTRUNC), nor open a model file or a
socket of its own; so each process raises its soft RLIMIT_NOFILE to the hard one at start,
and refuses connections past a cap that leaves a reserve for everything else (503 +
Retry-After, then close). Running out degrades into refusals; it never drains or kills.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket

#: descriptors kept for everything but connections: at least this many, or an eighth
RESERVE_MIN = 32
#: what a connection over the cap is told before it is closed
_BODY = json.dumps(
    {"error": "busy", "message": "this gateway process holds its most connections; retry"}
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


def raise_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def open_now() -> int:
    """Descriptors this process has open (0 where /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_cap(max_connections: int, baseline: int) -> int:
    """The most connections this process may hold: `max_connections`, or with 0 the current
    soft open-file limit less what was open before any connection (`baseline`: models,
    sockets, pipes) and a reserve. Read each time: an operator may change the limit with
    prlimit while the process runs."""
    if max_connections > 0:
        return max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, soft - baseline - max(RESERVE_MIN, soft // 8))


def refuse(conn: socket.socket, plain: bool) -> None:
    """Answer a connection over the cap 503 + Retry-After (plain HTTP only: a TLS client
    just sees the close) and close it, without waiting on it."""
    with contextlib.suppress(OSError):
        if plain:
            conn.send(REFUSAL)
    conn.close()
