"""What every transport does the same way: open a stream, apply control messages, account for
the frames it takes, and close with a final accounting."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from edge import codec
from edge.access import ratelimit
from edge.codec import ProtocolError
from edge.core.outbox import Outbox, Send
from edge.core.services import Services
from edge.core.stream import Stream
from edge.frames import Answer, Dropped, Error, Frame, Notice, Picture, RawInput, Result, Wire
from edge.models.repository import Route, UnknownModel

#: frames a credit-following client may have unanswered: with one, none is ever superseded
CREDIT_WINDOW = 1
#: how long a unary request (HTTP infer, gRPC Predict) waits for its one answer
UNARY_TIMEOUT_S = 30.0


def new_session_id() -> str:
    return uuid.uuid4().hex[:16]


def open_stream(
    services: Services,
    transport: str,
    route: Route,
    send: Send,
    session: str | None = None,
    wire: Wire[Any] = codec.JSON,
    client: str | None = None,
) -> Stream:
    """A stream bound to a model (raises UnknownModel), with its outbox wired to metrics;
    its replies are encoded by `wire` (docs/protocol.md's JSON unless the transport says)
    and written by `send`; `client` is the client's address (None: unknown)."""
    session = session or new_session_id()
    routed = services.repo.route(route, session)
    m = services.metrics
    settings = services.settings
    holder: list[Stream] = []

    def on_sent(latency: float) -> None:
        s = holder[0]
        s.stats.latency_sum_ms += latency * 1e3
        m.frame_latency.labels(transport, s.model_label).observe(latency)

    outbox = Outbox(
        send,
        max_pending=settings.max_pending_results,
        send_timeout=settings.send_timeout_s,
        on_sent=on_sent,
        wire=wire,
    )
    stream = Stream(
        id=session,
        transport=transport,
        route=routed.route,
        outbox=outbox,
        model_label=routed.model.name,
        client=client or "",
    )
    holder.append(stream)
    outbox.tap = services.publisher.tap(stream)
    return stream


def take_frame(
    services: Services,
    stream: Stream,
    seq: int,
    data: bytes | Picture | RawInput,
    received_at: float | None = None,
) -> None:
    """Account for one frame and hand it to the scheduler, or answer it at once."""
    now = time.monotonic() if received_at is None else received_at
    m = services.metrics
    t, label = stream.transport, stream.model_label
    stream.stats.received += 1
    m.received.labels(t, label).inc()
    over = ratelimit.allow_frame(services.settings, stream, now)
    if over is not None:  # a drop notice: runs of them merge, so a flood costs O(1) memory
        stream.stats.dropped += 1
        m.dropped.labels(t, label, "rate_limited").inc()
        m.rate_limited.labels(t, over).inc()
        stream.outbox.drop(seq, "rate_limited")
        return
    limit = services.settings.max_frame_bytes
    if isinstance(data, bytes) and len(data) > limit:
        stream.stats.errors += 1
        m.errors.labels(t, "decode").inc()
        message = f"frame is {len(data)} bytes, more than {limit}"
        stream.outbox.error(Error(seq, "bad_frame", message, "decode"))
        return
    if stream.outbox.congested:
        stream.stats.dropped += 1
        m.dropped.labels(t, label, "overload").inc()
        stream.outbox.drop(seq, "overload")
        return
    old = services.scheduler.offer(stream, Frame(stream.id, seq, now, data))
    if old is not None:
        stream.stats.dropped += 1
        m.dropped.labels(t, label, "stale").inc()
        stream.outbox.drop(old.seq, "stale", hold=True)  # goes out with `frame`'s answer


def refuse_frame(services: Services, stream: Stream, seq: int, code: str, message: str) -> None:
    """Answer frame `seq` with an error before it costs any work: its request asked for
    something the stream cannot do (a bad setting, an unknown model)."""
    stream.stats.received += 1
    stream.stats.errors += 1
    services.metrics.received.labels(stream.transport, stream.model_label).inc()
    services.metrics.errors.labels(stream.transport, "protocol").inc()
    stream.outbox.error(Error(seq, code, message))


class Typed:
    """The wire of a one-frame stream (`infer_once`): the typed values themselves, which its
    caller encodes for its own protocol."""

    def result(self, r: Result, /) -> Result:
        return r

    def error(self, e: Error, /) -> Error:
        return e

    def dropped(self, d: Dropped, /) -> Dropped:
        return d

    def notice(self, n: Notice, /) -> Notice:
        return n


async def infer_once(
    services: Services,
    transport: str,
    route: Route,
    data: bytes | RawInput,
    threshold: float | None = None,
    max_age_s: float | None = None,
    publish: bool = True,
    client: str | None = None,
) -> Answer | None:
    """One frame (seq 0) on a stream of its own, through the same scheduler as the streams
    (fair with them, batched, counted): its one answer (a result, an error or a drop notice),
    or None if none came within UNARY_TIMEOUT_S. Raises UnknownModel."""
    answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

    async def send(message: Answer | Notice) -> None:
        if not answer.done() and not isinstance(message, Notice):
            answer.set_result(message)

    stream = open_stream(services, transport, route, send, wire=Typed(), client=client)
    stream.threshold, stream.max_age_s, stream.publish = threshold, max_age_s, publish
    sender = asyncio.create_task(stream.outbox.run(), name=f"sender-{stream.id}")
    try:
        take_frame(services, stream, 0, data)
        return await asyncio.wait_for(answer, timeout=UNARY_TIMEOUT_S)
    except asyncio.TimeoutError:
        return None
    finally:
        close_stream(services, stream)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


def close_stream(services: Services, stream: Stream) -> Frame | None:
    """The stream has ended: no new work for it, and it no longer counts against its client.
    Returns the frame still waiting in its slot, if any."""
    ratelimit.forget(stream)
    return services.scheduler.withdraw(stream)


def apply_control(
    services: Services, stream: Stream, text: str, on_model: Callable[[Stream], None] | None = None
) -> None:
    """Apply a control message; bad ones are answered with `bad_message`, the stream goes on."""
    m = services.metrics
    try:
        ctl = codec.parse_control(text, services.settings.max_message_bytes)
        if ctl.type == "config" and ctl.config is not None:
            cfg = ctl.config
            if cfg.model is not None:
                routed = services.repo.route(cfg.model, stream.id)
                stream.route, stream.model_label = routed.route, routed.model.name
                if on_model:
                    on_model(stream)
            if cfg.threshold is not None:
                stream.threshold = cfg.threshold
            if cfg.max_frame_age_ms is not None:
                stream.max_age_s = cfg.max_frame_age_ms / 1000
            elif cfg.clear_deadline:
                stream.max_age_s = None
            if cfg.stats_every_s is not None:
                stream.stats_every_s = cfg.stats_every_s
            if cfg.publish is not None:
                stream.publish = cfg.publish
            if cfg.topic is not None or cfg.clear_topic:
                stream.topic = cfg.topic or ""
            stream.outbox.notice(Notice("config", _config_view(services, stream)))
            if cfg.credits:
                stream.outbox.notice(Notice("credit", {"n": CREDIT_WINDOW}))
        elif ctl.type == "stats":
            stream.outbox.notice(Notice("stats", stream.stats.as_dict()))
        elif ctl.type == "ping":
            stream.outbox.notice(Notice("pong"))
    except (ProtocolError, UnknownModel) as e:
        m.errors.labels(stream.transport, "protocol").inc()
        code = "unknown_model" if isinstance(e, UnknownModel) else "bad_message"
        stream.outbox.error(Error(None, code, str(e)))


def _config_view(services: Services, stream: Stream) -> dict[str, object]:
    try:
        model = services.repo.resolve(stream.route).ref
    except UnknownModel:
        model = stream.route.name
    return {
        "model": model,
        "threshold": stream.threshold,
        "max_frame_age_ms": None if stream.max_age_s is None else stream.max_age_s * 1000,
        "stats_every_s": stream.stats_every_s,
        "publish": stream.publish,
        "topic": stream.topic or stream.id,
    }


async def send_stats_periodically(stream: Stream) -> None:
    """Owned by the stream's session (edge.core.session): a stats message every
    `stats_every_s`, when set."""
    while True:
        await asyncio.sleep(stream.stats_every_s or 0.5)
        if stream.stats_every_s:
            stream.outbox.notice(Notice("stats", stream.stats.as_dict()))


async def finish(
    services: Services, stream: Stream, grace: float, reason: str, flush: float = 0.0
) -> None:
    """Let the frame in flight finish (bounded by `grace`), account for the one still waiting,
    flush (within what is left of `grace`, or `flush` seconds if more)."""
    deadline = time.monotonic() + grace
    await settle(services, stream, deadline)
    left = services.scheduler.withdraw(stream)
    if left is not None:
        stream.stats.dropped += 1
        services.metrics.dropped.labels(stream.transport, stream.model_label, reason).inc()
        stream.outbox.drop(left.seq, reason)
    await settle(services, stream, deadline)
    await asyncio.sleep(0)  # let replies the workers already pushed reach the outbox
    await stream.outbox.flush(max(0.1, flush, deadline - time.monotonic()))


async def settle(services: Services, stream: Stream, deadline: float) -> None:
    """Wait (polling, bounded by `deadline`) until the stream has no frame waiting or running."""
    for _ in range(10_000):
        if services.scheduler.is_idle(stream) or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.005)
