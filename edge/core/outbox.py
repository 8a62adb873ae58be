"""The way out. One sender per stream, with a bounded backlog.

The outbox holds messages already encoded for its stream's wire (`wire`, an
edge.frames.Wire chosen by the transport: results and errors come encoded from the worker
that answered them, notices are encoded here) and hands them to `send` one at a time. Results
and errors queue up to a limit; drop notices are kept as runs of seqs and merged into one
message each (a frame superseded by a newer one is reported with the next message its stream
is sent, not on its own: the sender wakes and writes once a result, not once a frame read),
so a client that stops reading costs O(1) memory: once its backlog is full its
new frames are dropped as `overload` before they cost any work, and a socket that accepts
nothing for `send_timeout` seconds is closed. Replies to control messages are bounded too:
past the bound, a pong, stats or config notice joins the one of its type already waiting
rather than queueing again (MERGED), and an error about a control message is not queued
while the backlog is full, so a client that sends pings and never reads costs nothing.

A stream's `tap` (edge/sinks/publisher.py), when result sinks are configured, sees every result
and drop notice the outbox takes for its client, and passes it on without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from edge import codec
from edge.compat import timeout
from edge.frames import Dropped, Error, Notice, Result, Wire

log = logging.getLogger("edge.outbox")

_MAX_SEQS_PER_MESSAGE = 512

#: notices of which at most one waits at a time: a new one updates the one waiting
MERGED = frozenset({"pong", "stats", "config"})

M = TypeVar("M")
#: writes one message of the stream's wire to its client
Send = Callable[[Any], Awaitable[None]]


class Tap(Protocol):
    """Sees what a stream's client is sent: each result and each drop notice. Never waits."""

    def result(self, result: Result, received_at: float, text: str | None) -> None:
        """`text`: the result's JSON (codec.result) if the worker made it, else None."""
        ...

    def dropped(self, seq: int, reason: str) -> None: ...


class SlowConsumer(Exception):
    """The client accepted nothing for longer than the send timeout."""


class Outbox(Generic[M]):
    def __init__(
        self,
        send: Callable[[M], Awaitable[None]],
        *,
        max_pending: int,
        send_timeout: float,
        on_sent: Callable[[float], None] | None = None,
        wire: Wire[M] | None = None,
    ) -> None:
        self._send = send
        #: the stream's encoding (codec.JSON unless its transport chose another)
        self.wire: Wire[M] = wire if wire is not None else cast("Wire[M]", codec.JSON)
        self._max_pending = max_pending
        self._timeout = send_timeout
        self._on_sent = on_sent or (lambda _t: None)
        #: encoded messages, or the type of a MERGED notice encoded when its turn comes
        self._messages: deque[tuple[M | _Merged, float]] = deque()
        self._merged: dict[str, Notice] = {}
        self._drops: dict[str, list[list[int]]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed: BaseException | None = None
        self.tap: Tap | None = None

    @property
    def congested(self) -> bool:
        return len(self._messages) >= self._max_pending

    def put(self, message: M, received_at: float = 0.0) -> None:
        """Queue an encoded result, error or notice; `received_at` feeds the latency metric."""
        if self.failed is None:
            self._messages.append((message, received_at))
            self._kick()

    def result(
        self, result: Result, message: M, received_at: float, text: str | None = None
    ) -> None:
        """Queue a frame's result (`message`, its encoding for the wire), and show it to the
        tap (with `text`, its JSON, when the worker made it)."""
        if self.failed is None:
            self.put(message, received_at)
            if self.tap is not None:
                self.tap.result(result, received_at, text)

    def error(self, error: Error) -> None:
        """Queue an error the event loop decided (a refused frame, a bad control message;
        the latter not while the backlog is full: it answers no frame)."""
        if error.seq is not None or not self.congested:
            self.put(self.wire.error(error))

    def notice(self, notice: Notice) -> None:
        """Queue a notice; past the backlog's bound, a MERGED one joins the one of its type
        waiting (at most one each waits, whatever the client sends)."""
        merge = notice.type in MERGED and (self.congested or notice.type in self._merged)
        if not merge:
            self.put(self.wire.notice(notice))
        elif self.failed is None:
            if notice.type not in self._merged:
                self._messages.append((_Merged(notice.type), 0.0))
            self._merged[notice.type] = notice
            self._kick()

    def drop(self, seq: int, reason: str, *, hold: bool = False) -> None:
        """Queue a drop notice; consecutive seqs with one reason merge into one run. `hold`:
        the frame was superseded by one still to be answered; its notice waits for the next
        message (or a flush) rather than wake the sender for itself, so the drops of a
        result's frame interval go out merged, as one message, with it."""
        if self.failed is not None:
            return
        runs = self._drops.setdefault(reason, [])
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
        if hold:
            self._idle.clear()
        else:
            self._kick()
        if self.tap is not None:
            self.tap.dropped(seq, reason)

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def flush(self, within: float) -> bool:
        """Wait until everything queued (held drop notices too) was written; False if
        `within` seconds ran out."""
        if self._drops:
            self._kick()
        try:
            async with timeout(within):
                await self._idle.wait()
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self) -> None:
        """The sender task: writes until cancelled; raises SlowConsumer, or ends on a dead
        socket."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                async with timeout(self._timeout):
                    while self._drops or self._messages:
                        if self._drops:
                            drops, self._drops = self._drops, {}
                            for reason, runs in drops.items():
                                for chunk in _chunks(runs):
                                    notice = Dropped(tuple(chunk), reason)
                                    await self._send(self.wire.dropped(notice))
                        while self._messages and not self._drops:
                            item, received_at = self._messages.popleft()
                            if isinstance(item, _Merged):
                                item = self.wire.notice(self._merged.pop(item.type))
                            await self._send(item)
                            if received_at:
                                self._on_sent(time.monotonic() - received_at)
            except asyncio.TimeoutError:
                self.failed = SlowConsumer()
                self._idle.set()
                raise SlowConsumer(f"client accepted nothing for {self._timeout:g} s") from None
            except (ConnectionError, RuntimeError) as e:
                self.failed = e
                self._idle.set()
                log.debug("sender stopped: %s", e)
                return
            if not self._wake.is_set():
                self._idle.set()


class _Merged:
    """The place in the queue of the MERGED notice of its type waiting to be sent."""

    __slots__ = ("type",)

    def __init__(self, type_: str) -> None:
        self.type = type_


def _chunks(runs: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    cur: list[int] = []
    for start, end in runs:
        for seq in range(start, end + 1):
            cur.append(seq)
            if len(cur) == _MAX_SEQS_PER_MESSAGE:
                out.append(cur)
                cur = []
    if cur:
        out.append(cur)
    return out
