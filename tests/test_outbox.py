"""The per-stream sender: bounded backlog, merged drop notices, slow consumers cut off."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from edge.core.outbox import Outbox, SlowConsumer
from tests.pace import deadline

pytestmark = pytest.mark.unit


async def test_drop_notices_merge_and_name_each_seq_once() -> None:
    """Runs of drops must collapse into few messages that still name every seq exactly once."""
    sent: list[dict[str, object]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    box = Outbox(send, max_pending=4, send_timeout=1.0)
    for seq in [1, 2, 3, 7, 9, 10]:
        box.drop(seq, "stale")
    box.drop(4, "overload")
    box.put('{"type":"result","seq":5}')
    task = asyncio.create_task(box.run())
    assert await box.flush(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stale = [m for m in sent if m.get("reason") == "stale"]
    assert len(stale) == 1 and stale[0]["seqs"] == [1, 2, 3, 7, 9, 10]
    assert {"type": "dropped", "seq": 4, "reason": "overload"} in sent
    assert {"type": "result", "seq": 5} in sent


async def test_backlog_is_bounded_and_a_stuck_socket_is_cut_off() -> None:
    """A client whose socket accepts nothing: the backlog reports congestion at its limit
    (so new frames are dropped, not queued) and the sender gives up after the timeout."""
    blocked = asyncio.Event()

    async def send(text: str) -> None:
        blocked.set()
        await asyncio.Event().wait()  # never completes, like a full socket

    box = Outbox(send, max_pending=3, send_timeout=0.2)
    task = asyncio.create_task(box.run())
    for i in range(4):
        box.put(f'{{"seq":{i}}}')
    await blocked.wait()
    assert box.congested  # 3 still queued behind the stuck one
    with pytest.raises(SlowConsumer):
        await asyncio.wait_for(task, 0.2 + deadline())
    assert box.failed is not None
    box.put("after")  # ignored once failed: nothing accumulates for a dead client
    assert len(box._messages) == 3  # noqa: SLF001


async def test_a_held_drop_goes_out_with_the_next_message_merged_with_the_others() -> None:
    """A frame superseded by a newer one (hold) wakes no sender of its own: its notice waits
    for the next message of the stream and goes out before it, merged with the other held
    ones; a flush sends what is held even when no message follows."""
    sent: list[dict[str, object]] = []

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    box = Outbox(send, max_pending=4, send_timeout=1.0)
    task = asyncio.create_task(box.run())
    try:
        box.drop(1, "stale", hold=True)
        box.drop(3, "stale", hold=True)
        for _ in range(5):
            await asyncio.sleep(0)
        assert sent == []  # nothing woke the sender
        box.put('{"type":"result","seq":4}')
        assert await box.flush(1.0)
        assert sent == [
            {"type": "dropped", "seqs": [1, 3], "reason": "stale"},
            {"type": "result", "seq": 4},
        ]
        box.drop(5, "stale", hold=True)
        assert await box.flush(1.0)  # the stream ends: what is held goes out
        assert sent[-1] == {"type": "dropped", "seq": 5, "reason": "stale"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
