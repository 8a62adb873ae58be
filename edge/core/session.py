"""One client stream's life, the same on every transport: a template each transport fills in.

`StreamSession` owns what is the same on every wire: opening the stream (edge.core.streams),
counting it (`edge_active_streams`, `Services.sessions`), saying hello, the tasks (the
stream's sender, the transport's reader, the stats ticker) and their reaping, waiting for the
first way the stream ends, answering what was taken (or withdrawing it), the goaway notice on
drain, closing the stream and the log lines. A transport supplies only:

- `send`: the outbox's writer, one reply message onto its wire;
- `say_hello`: how it tells the client its session, model and limits;
- `read`: its reader, the only task that reads the wire: frames to `take_frame`, control
  messages to `apply_control`, until the client goes (None) or it ends the stream itself
  (a close of the transport's own, `C`);
- `close_wire`: how it closes its wire for an `Ending` (a WebSocket close code, a gRPC status
  and trailing metadata, a peer connection closed), and what it said, for the log.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from edge import codec
from edge.core import streams
from edge.core.outbox import SlowConsumer
from edge.core.services import Services
from edge.core.stream import Stream
from edge.frames import Notice, Wire
from edge.models.repository import Route, UnknownModel

#: a frame still running when the stream ends gets this long to be answered
CLOSE_GRACE_S = 1.0

#: a transport's own way to close its wire, chosen by its reader
C = TypeVar("C")


class How(enum.Enum):
    """How a stream ended, whatever its wire."""

    CLOSED = "closed"  # the client went (or finished sending, and was answered), or close()
    SLOW_CONSUMER = "slow consumer"  # it accepted nothing for send_timeout_s
    SEND_FAILED = "send failed"  # its wire refused a write: it is gone
    GOING_AWAY = "going away"  # the gateway drains: frames answered, then goaway
    READER_FAILED = "reader failed"  # the reader raised
    READER_CLOSED = "reader closed"  # the reader ended the stream with a close of its wire's


@dataclass(frozen=True)
class Ending(Generic[C]):
    how: How
    #: READER_CLOSED: the close the reader chose
    close: C | None = None
    #: SLOW_CONSUMER, READER_FAILED: what was raised
    error: BaseException | None = None

    @property
    def drop_reason(self) -> str:
        """The reason frames still waiting are dropped with."""
        return "shutdown" if self.how is How.GOING_AWAY else "closed"


@dataclass(frozen=True)
class Hello:
    """What a client is told first: its session, the model answering, the largest frame."""

    session: str
    model: str
    max_frame_bytes: int
    process: int

    def text(self) -> str:
        return codec.hello(self.session, self.model, self.max_frame_bytes, process=self.process)


class Closing(NamedTuple):
    """How a transport closed its wire, for the log: words for the line (`code=1000`,
    `status=OK`, `(idle)`) and the code for its `extra`."""

    words: str
    code: int | str


class StreamSession(ABC, Generic[C]):
    #: task names start with it (a transport's tasks are told apart in tests and dumps)
    task_prefix = ""

    def __init__(self, services: Services, transport: str, log: logging.Logger) -> None:
        self.services = services
        self.transport = transport
        self.log = log
        self.stream: Stream | None = None
        self.retry_after_ms = 0
        self._told = asyncio.Event()  # goaway() or close() asked the stream to end
        self._told_how = How.CLOSED
        self._running = False
        self._closing = False
        self._closed = asyncio.Event()

    # -- what a transport supplies -----------------------------------------------------------
    #: how the stream's replies are encoded for this wire (docs/protocol.md's JSON by default)
    wire: Wire[Any] = codec.JSON
    #: whether a client that finished sending (its reader returned None) still reads, as a
    #: gRPC call after half-close does: its replies then flow for as long as it accepts them
    #: (the outbox's send timeout, as on a live stream), not only for CLOSE_GRACE_S
    reads_after_sending = False

    @abstractmethod
    async def send(self, message: Any) -> None:
        """The outbox's writer: one reply, as `wire` encoded it, onto the wire."""

    @abstractmethod
    async def say_hello(self, hello: Hello) -> None:
        """Tell the client its session before anything else is sent."""

    @abstractmethod
    async def read(self, stream: Stream) -> C | None:
        """Read the wire until the client goes (None) or the stream must end (a close)."""

    @abstractmethod
    async def close_wire(self, ending: Ending[C]) -> Closing:
        """Close the wire as `ending` says; never raises."""

    def answerable(self) -> bool:
        """Whether replies can still reach the client once reading stopped."""
        return True

    async def say_goaway(self, stream: Stream) -> None:
        """The drain's last message: when to come back."""
        stream.outbox.notice(Notice("goaway", {"retry_after_ms": self.retry_after_ms}))
        await stream.outbox.flush(CLOSE_GRACE_S)

    # -- the life ----------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._opened().id

    @property
    def closing(self) -> bool:
        return self._closing

    def open(self, route: Route, client: str | None) -> Stream:
        """Open the stream on `route` for the client at address `client` (raises
        UnknownModel) and count the session."""
        stream = self.stream = streams.open_stream(
            self.services, self.transport, route, self.send, wire=self.wire, client=client
        )
        self.services.metrics.active_streams.labels(self.transport).inc()
        self.services.session_opened(self)
        return stream

    def hello(self) -> Hello:
        stream, services = self._opened(), self.services
        try:
            model = services.repo.resolve(stream.route).ref
        except UnknownModel:
            model = stream.route.name
        max_frame_bytes = services.settings.max_frame_bytes
        return Hello(stream.id, model, max_frame_bytes, services.cluster.index)

    async def run(self) -> None:
        """Serve the opened stream until it ends; returns once it is closed."""
        if self._closing:  # ended before it ran (drained while a WebRTC offer negotiated)
            return
        self._running = True
        stream, services = self._opened(), self.services
        ending: Ending[C] = Ending(How.CLOSED)
        tasks: list[asyncio.Task[Any]] = []
        try:
            hello = self.hello()
            await self.say_hello(hello)
            sender = self._start(tasks, stream.outbox.run(), "sender")
            reader = self._start(tasks, self.read(stream), "reader")
            told = self._start(tasks, self._told.wait(), "told")
            self._start(tasks, streams.send_stats_periodically(stream), "stats")
            self.log.info(
                "session=%s stream opened model=%s",
                stream.id,
                hello.model,
                extra={"session": stream.id, "model": hello.model, "transport": self.transport},
            )
            done, _ = await asyncio.wait(
                {reader, sender, told}, return_when=asyncio.FIRST_COMPLETED
            )
            ending = self._ending(done, reader, sender, told)
            reader.cancel()
            await _reap([reader])
            if not sender.done() and self.answerable():
                still_reading = self.reads_after_sending and ending.how is How.CLOSED
                flush = services.settings.send_timeout_s if still_reading else 0.0
                await streams.finish(services, stream, CLOSE_GRACE_S, ending.drop_reason, flush)
                if ending.how is How.GOING_AWAY:
                    await self.say_goaway(stream)
            else:
                services.scheduler.withdraw(stream)
        finally:
            for t in tasks:
                t.cancel()
            await _reap(tasks)
            await self._close_up(ending)

    async def goaway(self, retry_after_ms: int) -> None:
        """Drain: answer every frame taken, say goaway, close as "going away"."""
        self.retry_after_ms = retry_after_ms
        await self._end_now(How.GOING_AWAY)

    async def close(self) -> None:
        """End the stream now, as if its client had closed; idempotent."""
        await self._end_now(How.CLOSED)

    async def _end_now(self, how: How) -> None:
        if not self._told.is_set():
            self._told_how = how
            self._told.set()
        if not self._running:  # nothing was read, so nothing to answer
            await self._close_up(Ending(how))
        await self._closed.wait()

    def _ending(
        self,
        done: set[asyncio.Task[Any]],
        reader: asyncio.Task[C | None],
        sender: asyncio.Task[None],
        told: asyncio.Task[Any],
    ) -> Ending[C]:
        """How the stream ended, from the first of its tasks to finish."""
        sid = self._opened().id
        failed = sender.exception() if sender in done else None
        if isinstance(failed, SlowConsumer):
            self.log.warning("session=%s %s", sid, failed)
            return Ending(How.SLOW_CONSUMER, error=failed)
        if told in done:
            return Ending(self._told_how)
        if reader in done and reader.exception() is not None:
            self.log.error("session=%s reader failed: %r", sid, reader.exception())
            return Ending(How.READER_FAILED, error=reader.exception())
        if reader in done and reader.result() is not None:
            return Ending(How.READER_CLOSED, close=reader.result())
        return Ending(How.SEND_FAILED if sender in done else How.CLOSED)

    async def _close_up(self, ending: Ending[C]) -> None:
        """No new work for the stream, the wire closed, the session no longer counted."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        stream, services = self._opened(), self.services
        closing = Closing(ending.how.value, ending.how.value)
        try:
            streams.close_stream(services, stream)
            services.metrics.active_streams.labels(self.transport).dec()
            closing = await self.close_wire(ending)
        finally:
            services.session_closed(self)
            self._closed.set()
            self.log.info(
                "session=%s stream closed %s %s",
                stream.id,
                closing.words,
                stream.stats.as_dict(),
                extra={"session": stream.id, "transport": self.transport, "code": closing.code},
            )

    def _start(
        self, tasks: list[asyncio.Task[Any]], coro: Coroutine[Any, Any, Any], what: str
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.task_prefix}{what}-{self._opened().id}")
        tasks.append(task)
        return task

    def _opened(self) -> Stream:
        assert self.stream is not None, "open() the session first"
        return self.stream


async def _reap(tasks: list[asyncio.Task[Any]]) -> None:
    """Await cancelled tasks, for at most CLOSE_GRACE_S. A read that grpcio keeps pending
    while the call's writes are stalled by flow control (a client that reads nothing) does
    not end on cancel; it ends with the call, once the handler returns, so it is left to
    that, its outcome collected then."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, stalled = await asyncio.wait(pending, timeout=CLOSE_GRACE_S)
        for t in stalled:
            logging.getLogger("edge.session").debug("task %s ends with its wire", t.get_name())
            t.add_done_callback(_collect)
    for t in tasks:
        if t.done():
            _collect(t)


def _collect(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # seen: the session reported it already, or it is moot now
