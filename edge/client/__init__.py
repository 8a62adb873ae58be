"""The device client: stream frames to a gateway and read its replies (docs/client.md).

    async with edge.client.connect("ws://gw:8080", model="blazeface", token=...) as s:
        async for reply in s.stream(frames):
            if isinstance(reply, edge.client.Result):
                ...

`connect_sync` is the same for scripts without asyncio. `edge stream` is the command line.
"""

from edge.client.errors import BadUrl, ClientError, Refused, SourceError, Unreachable
from edge.client.mailbox import Frame
from edge.client.replies import (
    Classification,
    Credit,
    Detection,
    Dropped,
    Error,
    Goaway,
    Hello,
    Reply,
    Result,
    Stats,
    Timing,
)
from edge.client.session import Session, connect
from edge.client.sync import SyncSession, connect_sync
from edge.client.tally import Tally

__all__ = [
    "BadUrl",
    "Classification",
    "ClientError",
    "Credit",
    "Detection",
    "Dropped",
    "Error",
    "Frame",
    "Goaway",
    "Hello",
    "Refused",
    "Reply",
    "Result",
    "Session",
    "SourceError",
    "Stats",
    "SyncSession",
    "Tally",
    "Timing",
    "Unreachable",
    "connect",
    "connect_sync",
]
