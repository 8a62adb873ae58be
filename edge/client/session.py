"""The device's side of a stream: credit flow control, reconnects, goaway, nothing stale.

    async with edge.client.connect("ws://gw:8080", model="blazeface") as s:
        async for reply in s.stream(frames):
            ...

Three tasks, all owned by `stream()`: the pump takes frames from the source into a one-slot
mailbox (a live source replaces the waiting frame, counted as skipped); the sender sends the
newest frame whenever the gateway's credit allows one more in flight; the reader turns the
gateway's messages into replies. When a connection ends, frames it left unanswered are
answered `lost` by the client, the frame waiting in the mailbox is dropped as stale, and the
session connects again (the rules: docs/protocol.md, "Clients").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from edge.client import replies
from edge.client.backoff import Backoff
from edge.client.connection import Connection, open_connection, stream_url
from edge.client.dialer import Dialer
from edge.client.errors import ClientError
from edge.client.inflight import InFlight
from edge.client.mailbox import EndOfSource, LatestFrame, fill
from edge.client.tally import Tally

log = logging.getLogger("edge.client")

#: replies read from the socket and not yet taken by the caller; the reader waits beyond it
REPLY_QUEUE = 64
#: after the source ends, how long the last frames in flight may take to be answered
FINAL_WAIT_S = 30.0
#: how long a connection whose send failed may take to show its close to the reader
CLOSE_WAIT_S = 5.0
#: notices kept from `open()` until `stream()` yields them (the most recent)
NOTICES = 16
_END = object()


class Session:
    """One device stream, across as many connections as it takes. Use `connect()`."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        model: str | None = None,
        token: str | None = None,
        ca: Path | None = None,
        threshold: float | None = None,
        final_wait_s: float = FINAL_WAIT_S,
        backoff: Backoff | None = None,
    ) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("at least one gateway URL")
        self.model = model
        self.urls = [stream_url(u, model) for u in urls]
        self.token, self.ca = token, ca
        self.config: dict[str, object] = {} if threshold is None else {"threshold": threshold}
        self.final_wait_s = final_wait_s
        self.backoff = backoff or Backoff()
        self.tally = Tally()
        self.dialer = Dialer(self.urls, self.backoff, self.tally)
        self._http: aiohttp.ClientSession | None = None
        self._conn: Any = None  # a Connection, or a transport's own kind (edge.client.rtc)
        self._opened_at = 0.0
        self._runner: asyncio.Task[None] | None = None
        # per connection
        self._inflight = InFlight(self.tally)
        self._goaway: replies.Goaway | None = None
        #: notices from `open()` (retries while the gateway was full), yielded by `stream()`
        self._notices: deque[replies.Reply] = deque(maxlen=NOTICES)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self, connect: bool = True) -> None:
        """The first connection; raises ClientError when it cannot be made (a refusal with
        Retry-After is waited out and retried, like later ones). `connect=False` leaves it to
        `stream()`, which then yields its retries as they happen and raises its errors."""
        self._http = aiohttp.ClientSession()
        if not connect:
            return
        try:
            await self._connect(first=True, out=None)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop streaming and close the connection; idempotent."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def hello(self) -> replies.Hello | None:
        return None if self._conn is None else self._conn.hello

    # -- streaming ------------------------------------------------------------------------

    async def stream(
        self, frames: AsyncIterable[Any] | Iterable[Any], *, live: bool = False
    ) -> AsyncGenerator[replies.Reply, None]:
        """Send `frames` (encoded JPEG/PNG `bytes`, or `Frame`s) and yield every reply, the
        hello of each connection, and the client's own notices (`Dropped` with reason `lost`,
        `retrying`). `live`: the source does not wait for the gateway (a camera, a stream);
        frames it makes while the sender waits for credit are skipped, only the newest is
        sent. Otherwise each frame waits its turn and none is skipped."""
        if self._runner is not None:
            raise RuntimeError("a session streams one source at a time")
        out: asyncio.Queue[Any] = asyncio.Queue(REPLY_QUEUE)
        self._runner = asyncio.create_task(self._run(frames, live, out), name="edge-client")
        try:
            while self._notices:
                yield self._notices.popleft()
            if self._conn is not None:
                yield self._conn.hello
            while True:
                item = await out.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            runner, self._runner = self._runner, None
            if runner is not None:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner

    async def _run(
        self, frames: AsyncIterable[Any] | Iterable[Any], live: bool, out: asyncio.Queue[Any]
    ) -> None:
        mailbox = LatestFrame()
        pump: asyncio.Task[None] | None = None
        try:
            if self._conn is None:
                first = self.tally.connections == 0
                await self._connect(first=first, out=out, mailbox=mailbox, live=live)
            # the source starts once a gateway takes frames: a file is not skipped meanwhile
            pump = asyncio.create_task(
                fill(mailbox, frames, live, self.tally), name="edge-client-pump"
            )
            while True:
                await self._serve(mailbox, out)
                if pump.done():
                    error = pump.exception()
                    if error is not None:
                        raise error
                    if live and mailbox.clear() is not None:
                        self.tally.skipped["stale"] += 1  # not worth a reconnect: it is old
                    if mailbox.ended:
                        break
                await self._reconnect(out, mailbox, live)
            await out.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await out.put(e)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump

    # -- one connection -------------------------------------------------------------------

    async def _serve(self, mailbox: LatestFrame, out: asyncio.Queue[Any]) -> None:
        """Stream on the current connection until it ends or the source is done and
        answered; then account for what it left unanswered."""
        conn = self._conn
        assert conn is not None
        sender = asyncio.create_task(self._send(conn, mailbox), name="edge-client-send")
        reader = asyncio.create_task(self._read(conn, out), name="edge-client-read")
        try:
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not reader.done():
                if isinstance(sender.exception(), EndOfSource):
                    # the source is done: wait (bounded) for the frames still in flight
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._inflight.drained(reader), self.final_wait_s)
                    await conn.ws.close()
                else:  # a send failed: the connection is ending, the reader sees the rest
                    await asyncio.wait({reader}, timeout=CLOSE_WAIT_S)
        finally:
            for t in (sender, reader):
                t.cancel()
            for t in (sender, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        self.backoff.connected_for(time.monotonic() - self._opened_at)
        lost = self._inflight.lost(conn.number)
        if lost is not None:
            await out.put(lost)
        self._conn = None
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if not reader.cancelled() and reader.exception() is not None:
            error = reader.exception()
            if isinstance(error, ClientError):
                raise error

    async def _send(self, conn: Connection, mailbox: LatestFrame) -> None:
        """Whenever a credit is free, the newest frame; raises EndOfSource at the end."""
        while True:
            await self._inflight.credit()
            frame = await mailbox.get()
            self._inflight.sent(frame)
            try:
                await conn.ws.send_bytes(frame.data)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                return  # the connection is going; the reader sees it end

    async def _read(self, conn: Connection, out: asyncio.Queue[Any]) -> None:
        async for msg in conn.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                reply = replies.parse(msg.data, conn.number)
            except (ValueError, KeyError, TypeError) as e:
                unreadable(conn.hello.session, e)  # nothing to account for
                continue
            reply = self._inflight.settle(reply)
            if isinstance(reply, replies.Goaway):
                self._goaway = reply
            await out.put(reply)

    # -- (re)connecting -------------------------------------------------------------------

    async def _reconnect(self, out: asyncio.Queue[Any], mailbox: LatestFrame, live: bool) -> None:
        self.tally.reconnects += 1
        goaway, self._goaway = self._goaway, None
        wait = self.dialer.after(goaway)
        await self._announce(out, "goaway" if goaway else "connection lost", wait)
        await asyncio.sleep(wait)
        await self._connect(first=False, out=out, mailbox=mailbox, live=live)

    async def _connect(
        self,
        *,
        first: bool,
        out: asyncio.Queue[Any] | None,
        mailbox: LatestFrame | None = None,
        live: bool = False,
    ) -> None:
        """A connection (edge.client.dialer), then a fresh start on it: no credit yet, nothing
        in flight, and the frame that waited through the outage dropped as stale."""

        async def open_one(url: str, number: int) -> Any:
            return await self._open(url, number, mailbox)

        async def announce(why: str, wait: float) -> None:
            await self._announce(out, why, wait)

        conn = await self.dialer.dial(open_one, announce, first=first)
        self.tally.connections += 1
        self._conn, self._opened_at = conn, time.monotonic()
        self._goaway = None
        self._inflight.reset()
        if mailbox is not None and live and mailbox.clear() is not None:
            self.tally.skipped["stale"] += 1  # read while no connection was up
        hello = _replace(
            conn.hello, raw={**conn.hello.raw, "url": conn.url, "frames_read": self.tally.read}
        )
        conn.hello = hello
        if out is not None:
            await out.put(hello)

    async def _open(self, url: str, number: int, mailbox: LatestFrame | None) -> Connection:
        """One connection to `url`; raises ClientError."""
        assert self._http is not None
        return await open_connection(
            self._http, url, number, token=self.token, ca=self.ca, config=self.config
        )

    async def _announce(self, out: asyncio.Queue[Any] | None, why: str, wait: float) -> None:
        raw = {"type": "retrying", "reason": why, "wait_s": round(wait, 3), "by": "client"}
        notice = replies.Reply(raw, self.tally.connections)
        if out is not None:
            await out.put(notice)
        else:
            self._notices.append(notice)


def connect(
    url: str | Sequence[str],
    *,
    model: str | None = None,
    token: str | None = None,
    ca: Path | str | None = None,
    threshold: float | None = None,
    final_wait_s: float = FINAL_WAIT_S,
) -> Session:
    """A session to use with `async with`: the first connection is made on entry (ClientError
    if it cannot be). Several URLs are replicas: a goaway moves the stream to the next one."""
    return Session(
        url,
        model=model,
        token=token,
        ca=Path(ca) if ca is not None else None,
        threshold=threshold,
        final_wait_s=final_wait_s,
    )


def unreadable(session: str, error: Exception) -> None:
    """A message from the gateway that is not of the protocol: logged, then skipped."""
    log.warning("session=%s unreadable message from the gateway skipped: %r", session, error)


def _replace(reply: Any, **changes: Any) -> Any:
    return dataclasses.replace(reply, **changes)
