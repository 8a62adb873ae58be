"""The frames sent on one connection and not yet answered, and the credit that bounds them
(docs/protocol.md, "Clients"): each answer settles its frames, frees their credit and names
the source frames it is about."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

from edge.client import replies
from edge.client.mailbox import Frame
from edge.client.tally import Tally


class InFlight:
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.window = 0  # frames the gateway lets us have unanswered (0 until its credit)
        self.frames: dict[int, tuple[Frame, float]] = {}  # seq -> (frame, sent at)
        self._next_seq = 0
        self._changed = asyncio.Event()

    def reset(self) -> None:
        """A new connection: no credit yet, seqs from 0."""
        self.window, self._next_seq = 0, 0
        self.frames.clear()

    async def credit(self) -> None:
        """Wait until one more frame may be sent."""
        while len(self.frames) >= self.window:
            self._changed.clear()
            await self._changed.wait()

    def sent(self, frame: Frame) -> None:
        self.frames[self._next_seq] = (frame, time.monotonic())
        self._next_seq += 1
        self.tally.sent += 1

    async def drained(self, reader: asyncio.Task[None]) -> None:
        """Wait until every frame is answered, or the reader has ended."""
        while self.frames and not reader.done():
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)

    def settle(self, reply: replies.Reply) -> replies.Reply:
        """Take a reply off the books: free its credit, name its source frames."""
        t = self.tally
        if isinstance(reply, replies.Result):
            entry = self.frames.pop(reply.seq, None)
            if entry is not None:
                t.results += 1
                latency = (time.monotonic() - entry[1]) * 1e3
                t.latencies_ms.append(latency)
                reply = _replace(
                    reply, frame=entry[0].index, latency_ms=round(latency, 3), image=entry[0].data
                )
        elif isinstance(reply, replies.Dropped):
            taken = [f[0].index for f in (self.frames.pop(s, None) for s in reply.seqs) if f]
            t.dropped[reply.reason] += len(taken)
            reply = _replace(reply, frames=tuple(taken))
        elif isinstance(reply, replies.Error):
            if reply.seq is not None:
                entry = self.frames.pop(reply.seq, None)
                if entry is not None:
                    t.errors += 1
                    reply = _replace(reply, frame=entry[0].index)
            elif self.window == 0:
                self.window = 1  # a gateway without credits: one frame at a time
        elif isinstance(reply, replies.Credit):
            self.window = reply.n
        self._changed.set()
        return reply

    def lost(self, connection: int) -> replies.Dropped | None:
        """The connection ended: what it left unanswered, as a client-made drop notice."""
        if not self.frames:
            return None
        seqs = sorted(self.frames)
        frames = tuple(self.frames[s][0].index for s in seqs)
        self.frames.clear()
        self.tally.dropped["lost"] += len(seqs)
        raw = {"type": "dropped", "seqs": seqs, "reason": "lost", "by": "client"}
        return replies.Dropped(raw, connection, tuple(seqs), frames, "lost")


def _replace(reply: Any, **changes: Any) -> Any:
    return dataclasses.replace(reply, **changes)
