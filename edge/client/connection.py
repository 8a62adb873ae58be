"""Opening one stream: the URL, the upgrade (token by header, TLS), hello, and asking for
credits. Every way it can fail becomes one of edge.client.errors."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from edge.client import replies
from edge.client.errors import BadUrl, Refused, Unreachable

SUBPROTOCOL = "edge.v1"
#: how long the gateway may take to send hello after the upgrade
HELLO_TIMEOUT_S = 10.0
#: the WebSocket is pinged this often; no pong within half of it counts as a lost connection
HEARTBEAT_S = 20.0
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def stream_url(url: str, model: str | None = None) -> str:
    """`ws://host:8080` (or http, https, wss; a path other than / is kept) to the stream
    endpoint's URL; raises BadUrl for anything that is not one."""
    parts = urlsplit(url.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise BadUrl(f"bad gateway URL {url!r}: expected ws://host:port (or wss, http, https)")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise BadUrl(f"bad gateway URL {url!r}: the port is not a number") from None
    path = parts.path if parts.path not in ("", "/") else "/v1/stream"
    query = urlencode({"model": model}) if model else parts.query
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def tls_context(ca: Path | None) -> ssl.SSLContext:
    """The system's trust store, or only the given CA bundle (PEM)."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as e:
        raise BadUrl(f"cannot read the CA file {ca}: {e}") from None


@dataclass
class Connection:
    ws: aiohttp.ClientWebSocketResponse[bool]
    hello: replies.Hello
    url: str
    number: int  # 1 for the first connection of a session

    async def close(self) -> None:
        await self.ws.close()


async def open_connection(
    http: aiohttp.ClientSession,
    url: str,
    number: int,
    *,
    token: str | None = None,
    ca: Path | None = None,
    config: dict[str, object] | None = None,
) -> Connection:
    """Upgrade, read hello, send the config message asking for credits (plus `config`)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    tls: ssl.SSLContext | bool = tls_context(ca) if url.startswith("wss:") else False
    try:
        ws = await http.ws_connect(
            url,
            protocols=(SUBPROTOCOL,),
            headers=headers,
            ssl=tls,
            heartbeat=HEARTBEAT_S,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
    except aiohttp.WSServerHandshakeError as e:
        raise refusal(e.status, e.message, e.headers) from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise Unreachable(
            f"TLS certificate of {host(url)} not trusted: {e.certificate_error}"
        ) from None
    except aiohttp.ClientSSLError as e:
        raise Unreachable(f"TLS failed with {host(url)}: {why(e)}") from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise Unreachable(f"cannot reach the gateway at {host(url)}: {why(e)}") from None
    try:
        msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise Unreachable(f"the gateway at {host(url)} closed the stream before hello")
        hello = replies.parse(msg.data, number)
        if isinstance(hello, replies.Error):
            raise Refused(401 if hello.code == "unauthorized" else 400, hello.message)
        if not isinstance(hello, replies.Hello):
            raise Unreachable(f"the gateway at {host(url)} sent {hello.type!r} before hello")
        await ws.send_str(json.dumps({"type": "config", "credits": True, **(config or {})}))
    except BaseException:
        await ws.close()
        raise
    return Connection(ws, hello, url, number)


def refusal(status: int, reason: str, headers: Mapping[str, str] | None) -> Refused:
    """An HTTP refusal of a stream as a Refused, with its Retry-After (seconds)."""
    retry = None
    if headers is not None and "Retry-After" in headers:
        try:
            retry = max(0.0, float(headers["Retry-After"]))
        except ValueError:
            retry = None  # an HTTP date: the backoff decides
    what = {
        401: "the gateway refused the token (401); pass a good one with --token",
        403: "the gateway refused this client (403 forbidden)",
        404: "the gateway has no such model or stream endpoint (404)",
        429: "this token holds its limit of streams (429)",
        503: "the gateway cannot take a stream now (503)",
    }.get(status, f"the gateway refused the stream ({status} {reason})")
    return Refused(status, what, retry)


def host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def why(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        os_error = e.os_error
        reason = getattr(os_error, "reason", None) or getattr(os_error, "strerror", None)
        return str(reason or os_error)
    text = str(e) or type(e).__name__
    return text.splitlines()[0]
