"""State the serving processes share: one small memory-mapped file, nothing pickled across.

Three parts, all fixed in size when the gateway starts:

- **A row per serving process** (`Member`): its pid, whether it is ready, whether its event loop
  keeps up, how many connections it holds, its memory. Only that process writes its row (the
  supervisor clears it when the process dies), so no lock is needed to write or read one.
- **A table of counts and token buckets by key** (`Table`): the streams open gateway-wide, per
  token and per client address, and each client's frame-rate bucket. Every count keeps one
  column per process, so when a process dies the supervisor zeroes its column and the slots it
  held come back. Changes take an `flock` on the file (held for microseconds; the kernel drops
  it if its holder dies). Keys are hashed to 64 bits; a key's row is freed when its counts
  reach zero, except that a row whose bucket was used stays idle (its bucket kept) until a
  new key needs its room.
- **A board of canary decisions** (`canaries`, read and written by edge/models/canary/board.py): a
row
  per model version on trial or decided, so that every process follows the one decision.

With one process the same code runs over anonymous memory without a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("edge.shared")

_HEADER = np.dtype(
    [("processes", "<i8"), ("capacity", "<i8"), ("reload_gen", "<i8"), ("flush_gen", "<i8")]
)
MEMBER = np.dtype(
    [
        ("pid", "<i8"),
        ("ready", "<i8"),
        ("saturated", "<i8"),
        ("conns", "<i8"),
        ("streams", "<i8"),
        ("received", "<i8"),
        ("reload_done", "<i8"),
        ("flush_done", "<i8"),  # the last flush_gen whose metrics it published
        ("rss", "<i8"),
        ("started", "<f8"),
    ]
)
#: a model version's canary trial and its decision, or a model's policy and retry count
CANARY = np.dtype(
    [
        ("key", "<u8"),
        ("state", "<i8"),
        ("by", "<i8"),
        ("gen", "<i8"),
        ("figures", "<f8", (8,)),
        ("policy", "<f8", (9,)),
        ("version", "S32"),
        ("reason", "S480"),
    ]
)
CANARY_ROWS = 64
_EMPTY, _FREED = 0, 1  # key values a real hash never takes


def _row(processes: int) -> np.dtype:
    return np.dtype(
        [("key", "<u8"), ("tokens", "<f8"), ("at", "<f8"), ("counts", "<i4", (processes,))]
    )


def _hash(key: str) -> int:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h if h > _FREED else h + 2


def capacity_for(max_streams: int) -> int:
    """Keys the table must hold: a few per stream (gateway, token, client), plus the clients
    with unary requests in flight."""
    return 4 * max_streams + 1024


def size(processes: int, capacity: int) -> int:
    return (
        _HEADER.itemsize
        + MEMBER.itemsize * processes
        + CANARY.itemsize * CANARY_ROWS
        + _row(processes).itemsize * capacity
    )


class Shared:
    """The mapped file (or anonymous memory) seen from process `index`."""

    def __init__(
        self, processes: int, capacity: int, index: int = 0, path: Path | None = None
    ) -> None:
        self.processes, self.capacity, self.index, self.path = processes, capacity, index, path
        n = size(processes, capacity)
        self._fd = -1
        # flock belongs to the open file, which every thread of a process shares: it keeps
        # processes apart, this lock the threads of one (the event loop's stream slots, the
        # worker threads' canary decisions)
        self._threads = threading.Lock()
        if path is None:
            self._mm = mmap.mmap(-1, n)
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._mm = mmap.mmap(self._fd, n)
        buf = memoryview(self._mm)
        at = _HEADER.itemsize
        self.header = np.ndarray((), _HEADER, buf[:at])
        self.members = np.ndarray((processes,), MEMBER, buf[at : at + MEMBER.itemsize * processes])
        at += MEMBER.itemsize * processes
        end = at + CANARY.itemsize * CANARY_ROWS
        self.canaries = np.ndarray((CANARY_ROWS,), CANARY, buf[at:end])
        self.rows = np.ndarray((capacity,), _row(processes), buf[end:])

    @classmethod
    def create(cls, path: Path, processes: int, capacity: int) -> Shared:
        """The supervisor makes the file once, zeroed, before it starts any process."""
        with open(path, "wb") as f:
            f.truncate(size(processes, capacity))
        shared = cls(processes, capacity, 0, path)
        shared.header["processes"], shared.header["capacity"] = processes, capacity
        return shared

    def attach(self, index: int) -> Shared:
        """The same memory seen from serving process `index` (after fork)."""
        return Shared(self.processes, self.capacity, index, self.path) if self.path else self

    @property
    def me(self) -> np.ndarray:
        return self.members[self.index]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive against every other thread of every process sharing the memory."""
        with self._threads:
            if self._fd < 0:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- the table ----------------------------------------------------------------------------
    def _find(self, h: int, insert: bool) -> int:
        """The row of hash `h`; with `insert`, a new row for it if there is none (-1: full)."""
        rows, cap = self.rows, self.capacity
        free = -1
        i = h % cap
        for _ in range(cap):
            k = int(rows["key"][i])
            if k == h:
                return i
            if k == _EMPTY:
                break
            if free < 0 and (k == _FREED or not rows["counts"][i].any()):
                free = i  # freed, or idle: a bucket nobody holds, kept until its room is needed
            i = (i + 1) % cap
        else:
            i = -1
        if not insert:
            return -1
        slot = free if free >= 0 else i
        if slot >= 0:
            rows[slot] = (h, np.nan, 0.0, 0)
        return slot

    def acquire(self, key: str, limit: int, keep_free: int = 0) -> bool:
        """Count one more holder of `key` for this process, unless `limit` (>0) holders exist
        across all processes. False when at the limit, or when `key` has no row yet and a new
        one would leave fewer than `keep_free` rows free (a full table: none)."""
        h = _hash(key)
        with self.locked():
            i = self._find(h, insert=False)
            if i < 0 and keep_free > 0 and self._used() + keep_free >= self.capacity:
                return False
            if i < 0:
                i = self._find(h, insert=True)
            if i < 0:
                log.warning("shared table full (%d keys); refusing %s", self.capacity, key[:16])
                return False
            counts = self.rows["counts"][i]
            if limit > 0 and int(counts.sum()) >= limit:
                if not counts.any():
                    self.rows["key"][i] = _FREED
                return False
            counts[self.index] += 1
            return True

    def release(self, key: str) -> None:
        h = _hash(key)
        with self.locked():
            i = self._find(h, insert=False)
            if i < 0:
                return
            counts = self.rows["counts"][i]
            if counts[self.index] > 0:
                counts[self.index] -= 1
            if not counts.any() and np.isnan(self.rows["tokens"][i]):
                self.rows["key"][i] = _FREED
            # a row whose bucket was used stays, idle, until its room is needed: a client whose
            # requests end before the next one comes does not get a fresh bucket each time

    def _used(self) -> int:
        """Rows held by a key with holders."""
        return int(((self.rows["key"] > _FREED) & self.rows["counts"].any(axis=1)).sum())

    def count(self, key: str) -> int:
        """Holders of `key` across all processes (read without the lock: a snapshot)."""
        i = self._find(_hash(key), insert=False)
        return 0 if i < 0 else int(self.rows["counts"][i].sum())

    def take_token(self, key: str, rate: float, now: float) -> bool | None:
        """One token from `key`'s bucket (`rate` a second, one second's burst), shared by all
        processes; None when `key` holds no row (nobody counted as its holder)."""
        h = _hash(key)
        with self.locked():
            i = self._find(h, insert=False)
            if i < 0:
                return None
            row = self.rows[i]
            burst = max(1.0, rate)
            tokens = burst if np.isnan(row["tokens"]) else float(row["tokens"])
            tokens = min(burst, tokens + max(0.0, now - float(row["at"])) * rate)
            row["at"] = max(float(row["at"]), now)
            ok = tokens >= 1.0
            row["tokens"] = tokens - 1.0 if ok else tokens
            return ok

    def forget(self, index: int) -> None:
        """A process is gone: its row and every count it held (the supervisor's call)."""
        with self.locked():
            self.members[index] = 0
            counts = self.rows["counts"]
            counts[:, index] = 0
            keys = self.rows["key"]
            dead = (keys > _FREED) & ~counts.any(axis=1)
            keys[dead] = _FREED

    def close(self) -> None:
        # numpy views keep the buffer exported; drop them before closing the map
        del self.header, self.members, self.canaries, self.rows
        self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class Cluster:
    """What a serving process knows of the others: its place and the shared state."""

    index: int
    size: int
    shared: Shared
    #: the supervisor, told to forward a reload to every process (0: no supervisor)
    supervisor_pid: int = 0
    #: prometheus_client's multiprocess directory (None: this process's registry alone)
    metrics_dir: Path | None = None

    @classmethod
    def alone(cls, max_streams: int) -> Cluster:
        """A single serving process: the same state, in its own memory."""
        shared = Shared(1, capacity_for(max_streams))
        shared.me["pid"] = os.getpid()
        return cls(0, 1, shared)

    def not_ready(self) -> list[str]:
        """Why the gateway as a whole is not ready: processes missing or still warming up."""
        reasons = []
        for i, row in enumerate(self.shared.members):
            if i == self.index:
                continue
            if row["pid"] == 0:
                reasons.append(f"process {i} of {self.size} is starting")
            elif not row["ready"]:
                reasons.append(f"process {i} of {self.size} is warming up")
        return reasons
