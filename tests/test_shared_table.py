"""The shared table (edge.sharedmem) against many threads and many clients (issue #23).

Guards against the table's lock keeping processes apart but not the threads of one (canary
decisions are taken from worker threads while the event loop counts stream slots: a lost
update leaks or double-frees a slot), against clients from many addresses filling the table
until no stream can be counted, and against a client's bucket being forgotten between two of
its requests (each request then found a full budget)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge.access import ratelimit
from edge.access.ratelimit import StreamQuota
from edge.sharedmem import Shared, capacity_for

pytestmark = pytest.mark.unit


def test_the_lock_keeps_two_threads_of_one_process_apart(tmp_path: Path) -> None:
    """While one thread holds `locked()`, another thread of the same process waits for it
    (flock alone lets it in: the lock belongs to the open file both threads share)."""
    shared = Shared.create(tmp_path / "shared", 2, 64)
    held, entered, leave = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with shared.locked():
            held.set()
            leave.wait(30)

    def other() -> None:
        held.wait(30)
        with shared.locked():
            entered.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for t in threads:
        t.start()
    assert held.wait(30)
    assert not entered.wait(0.5), "a second thread got in while the first held the lock"
    leave.set()
    assert entered.wait(30)
    for t in threads:
        t.join(30)


def test_counts_from_many_threads_add_up(tmp_path: Path) -> None:
    """Slots taken and given back from 8 threads at once leave the count where it began."""
    shared = Shared.create(tmp_path / "shared", 1, 64)
    shared.acquire("streams:*", 0)

    def churn() -> None:
        for _ in range(500):
            if shared.acquire("streams:*", 0):
                shared.release("streams:*")

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert shared.count("streams:*") == 1


def test_clients_from_many_addresses_never_crowd_out_stream_rows() -> None:
    """Every row a client may take filled by requests held from as many addresses (an IPv6
    block): new clients are refused, yet every stream row (the gateway's count and one per
    token, up to max_streams) still fits."""
    max_streams = 16
    shared = Shared(1, capacity_for(max_streams))
    held = []
    for n in range(shared.capacity):
        hold = ratelimit.request(shared, 2.0, f"2001:db8::{n:x}", 0.0)
        if hold is None:
            break
        held.append(hold)
    assert 0 < len(held) < shared.capacity
    assert ratelimit.request(shared, 2.0, "2001:db8::ffff:1", 0.0) is None
    streams = StreamQuota(max_streams, shared, kind="streams")
    tokens = StreamQuota(1, shared, kind="quota")
    slots = [streams.acquire("*") for _ in range(max_streams)]
    slots += [tokens.acquire(f"token-{i}") for i in range(max_streams)]
    assert all(slot is not None for slot in slots)
    for hold in held:
        hold.release()
    assert ratelimit.request(shared, 2.0, "2001:db8::ffff:1", 0.0) is not None


def test_a_clients_budget_outlives_its_requests() -> None:
    """Requests one after another (each ended before the next) share one budget: the
    client's bucket stays while idle, and its room is still there for other keys."""
    shared = Shared(1, 8)
    passed = 0
    for _ in range(10):
        hold = ratelimit.request(shared, 2.0, "10.0.0.1", 0.0)
        if hold is not None:
            passed += 1
            hold.release()
    assert passed == 2
    assert all(shared.acquire(f"quota:{i}", 0) for i in range(8))  # idle rows give way
