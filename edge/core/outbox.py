"""The way out. One sender per stream, with a bounded backlog.

Results and errors queue up to a limit; drop notices are kept as runs of seqs and merged into
one message each, so a client that stops reading costs O(1) memory: once its backlog is full
its new frames are dropped as `overload` before they cost any work, and a socket that accepts
nothing for `send_timeout` seconds is closed.

A stream's `tap` (edge/sinks/publisher.py), when result sinks are configured, sees every result
and drop notice the outbox takes for its client, and passes it on without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from edge import codec
from edge.compat import timeout

log = logging.getLogger("edge.outbox")

_MAX_SEQS_PER_MESSAGE = 512

Send = Callable[[str], Awaitable[None]]


class Tap(Protocol):
    """Sees what a stream's client is sent: each result and each drop notice. Never waits."""

    def result(self, seq: int, text: str, received_at: float, ref: str) -> None: ...

    def dropped(self, seq: int, reason: str) -> None: ...


class SlowConsumer(Exception):
    """The client accepted nothing for longer than the send timeout."""


class Outbox:
    def __init__(
        self,
        send: Send,
        *,
        max_pending: int,
        send_timeout: float,
        on_sent: Callable[[float], None] | None = None,
    ) -> None:
        self._send = send
        self._max_pending = max_pending
        self._timeout = send_timeout
        self._on_sent = on_sent or (lambda _t: None)
        self._messages: deque[tuple[str, float]] = deque()
        self._drops: dict[str, list[list[int]]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed: BaseException | None = None
        self.tap: Tap | None = None

    @property
    def congested(self) -> bool:
        return len(self._messages) >= self._max_pending

    def put(self, text: str, received_at: float = 0.0) -> None:
        """Queue a result, an error or a notice; `received_at` feeds the latency metric."""
        if self.failed is None:
            self._messages.append((text, received_at))
            self._kick()

    def result(self, seq: int, text: str, received_at: float, ref: str) -> None:
        """Queue a frame's result (encoded `text`, from model `ref`), and show it to the tap."""
        if self.failed is None:
            self.put(text, received_at)
            if self.tap is not None:
                self.tap.result(seq, text, received_at, ref)

    def drop(self, seq: int, reason: str) -> None:
        """Queue a drop notice; consecutive seqs with one reason merge into one run."""
        if self.failed is not None:
            return
        runs = self._drops.setdefault(reason, [])
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
        self._kick()
        if self.tap is not None:
            self.tap.dropped(seq, reason)

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def flush(self, within: float) -> bool:
        """Wait until everything queued was written; False if `within` seconds ran out."""
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
                                    await self._send(codec.dropped(chunk, reason))
                        while self._messages and not self._drops:
                            text, received_at = self._messages.popleft()
                            await self._send(text)
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
