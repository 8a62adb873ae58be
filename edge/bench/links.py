"""One small client per transport, all behind one interface (`edge.bench.link.Link`), so a
scenario does not know which transport carries its frames. A transport is a name in TRANSPORTS
and an opener: `opener(name)(http, url, model)` connects one stream and returns its Link once
the server's hello has arrived (or, for gRPC, which has none, once the channel is ready). `url`
is the server's address for that transport (`Server.address`): http://host:port for WebSocket
and WebRTC, grpc://host:port for gRPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from edge.bench.link import EndOfStream, Link, TransportUnavailable, WebSocketLink

__all__ = ["TRANSPORTS", "EndOfStream", "Link", "Opener", "TransportUnavailable", "opener"]

#: every transport `edge bench --transports` knows, in the order the report lists them;
#: `websocket-credits` is the WebSocket driven by a client that follows credits
TRANSPORTS = ("websocket", "websocket-credits", "webrtc", "grpc")

Opener = Callable[[aiohttp.ClientSession, str, str], Awaitable[Link]]


def opener(name: str) -> Opener:
    """How to open a stream over transport `name`; TransportUnavailable when it cannot be."""
    if name == "websocket":
        return WebSocketLink.open
    if name == "websocket-credits":
        from edge.bench.creditlink import CreditWebSocketLink

        return CreditWebSocketLink.open
    if name == "webrtc":
        try:
            from edge.bench.rtclink import RtcLink
        except ImportError as e:
            raise TransportUnavailable(
                f"webrtc needs aiortc (pip install 'edge-gateway[webrtc]'): {e}"
            ) from None
        return RtcLink.open
    if name == "grpc":
        try:
            from edge.bench.grpclink import GrpcLink
        except ImportError as e:
            raise TransportUnavailable(f"grpc needs grpcio and edge.transports.grpc: {e}") from None
        return GrpcLink.open
    raise TransportUnavailable(f"unknown transport {name!r}; known: {', '.join(TRANSPORTS)}")
