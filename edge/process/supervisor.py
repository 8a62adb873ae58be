"""The supervisor: one small loop that keeps N serving processes running behind one port.

It owns the listening socket and accepts every connection itself, then hands it, whole, to the
serving process that holds the fewest connections (SCM_RIGHTS over a private socket pair);
that process serves the connection to its end (edge/process/serving.py). It also spawns the
processes,
reaps and replaces the dead, and turns signals into orders: SIGTERM/SIGINT drain every process,
SIGHUP (or a process asking with SIGUSR1) makes every process rescan the model repository.
It does nothing else: no HTTP, no models, no frames.

Why it accepts instead of letting the processes share the listening socket: a shared socket
gives each new connection to whichever process wakes first, and asyncio accepts every queued
connection in one wake-up, so a burst of streams lands lumped on a few processes; handing each
to the least loaded process keeps the streams, and so the rounds and the frame ages, even.
(docs/architecture.md, "Several processes".)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from edge.process import descriptors, rundir
from edge.process.preflight import CONFIG_EXIT
from edge.settings import Settings
from edge.sharedmem import Shared, capacity_for

log = logging.getLogger("edge.supervisor")

#: a process that dies this soon after it started is restarted after a growing pause
QUICK_DEATH_S = 10.0
MAX_BACKOFF_S = 10.0
#: connections accepted per wake-up before the loop looks at its other work
ACCEPT_BURST = 64
#: signals a serving process starts with blocked, until its handlers are in place
#: (edge.process.serving.hold_signals): none of them may kill it while it starts
HELD_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1})


@dataclass
class Child:
    """One serving process as the supervisor sees it."""

    index: int
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    started: float = field(default_factory=time.monotonic)
    handed: int = 0  # connections handed over, for the load estimate


class Supervisor:
    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.n = processes
        self.children: list[Child | None] = [None] * processes
        self._respawn_at: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._signals: list[int] = []
        self._next = 0  # round-robin start among equally loaded processes
        self.stopping = False
        self._deadline = float("inf")
        self.exit_code = 0  # 2 once a process refused its configuration

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Listen, start the processes, serve until drained; every step undone in reverse."""
        for sig in (*HELD_SIGNALS, signal.SIGCHLD):  # first: queued until the loop runs
            signal.signal(sig, self._on_signal)
        descriptors.raise_limit()
        try:
            self.listener = self._listen()
        except OSError as e:
            where = f"{self.settings.host}:{self.settings.port}"
            print(f"edge: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
            return 2
        with contextlib.ExitStack() as undo:
            undo.callback(self.listener.close)
            self.dir = undo.enter_context(rundir.state_dir())
            self._metrics()
            self.shared = Shared.create(
                self.dir / "shared", self.n, capacity_for(self.settings.max_streams)
            )
            undo.callback(self.shared.close)
            sel = undo.enter_context(selectors.DefaultSelector())
            sel.register(self.listener, selectors.EVENT_READ, "accept")
            wake = self._wake_on_signals(undo)
            sel.register(wake, selectors.EVENT_READ, "wake")
            host, port = self.listener.getsockname()[:2]
            log.info(
                "supervisor pid %d: %d serving processes on %s:%d", os.getpid(), self.n, host, port
            )
            undo.callback(self._kill_all, "supervisor exiting")
            for i in range(self.n):
                self._spawn(i)
            self._loop(sel, wake)
        return self.exit_code

    def _loop(self, sel: selectors.BaseSelector, wake: int) -> None:
        while not (self.stopping and not any(self.children)):
            for key, _ in sel.select(timeout=0.25):
                if key.data == "accept":
                    self._accept()
                else:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake, 512):
                            pass
            self._handle_signals()
            self._reap()
            self._respawn_due()
            if self.stopping and time.monotonic() > self._deadline:
                self._kill_all("the drain took longer than its grace period")

    def _metrics(self) -> None:
        """The processes' metrics files go to our directory; the restart counter is ours."""
        self.metrics_dir = self.dir / "metrics"
        self.metrics_dir.mkdir()
        # prometheus_client picks its multiprocess mode when it is imported: set it first
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        from prometheus_client import Counter, multiprocess

        self._mark_dead = multiprocess.mark_process_dead
        self.restarts = Counter(
            "edge_process_restarts", "Serving processes replaced after they died"
        )

    def _wake_on_signals(self, undo: contextlib.ExitStack) -> int:
        """Signals are queued by their handlers and acted on by the loop, which a self-pipe
        wakes (gunicorn's arbiter does the same)."""
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
            undo.callback(os.close, fd)
        signal.set_wakeup_fd(wake_w)
        undo.callback(signal.set_wakeup_fd, -1)
        return wake_r

    def _listen(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=1024)
        sock.setblocking(False)
        return sock

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # acted on by the loop, woken by the wakeup fd

    def _handle_signals(self) -> None:
        signals, self._signals = self._signals, []
        for sig in signals:
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    self._kill_all("second signal: exiting now")
                    sys.exit(1)
                self.stopping = True
                self._deadline = time.monotonic() + self.settings.drain_seconds + 5.0
                log.info("signal %d: draining %d processes", sig, sum(map(bool, self.children)))
                self._tell_all(signal.SIGTERM)
            elif sig in (signal.SIGHUP, signal.SIGUSR1):
                log.info("rescanning the model repository in every process")
                self._tell_all(signal.SIGHUP)

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        boot = {
            "settings": self.settings,
            "index": index,
            "size": self.n,
            "shared": str(self.dir / "shared"),
            "capacity": self.shared.capacity,
            "supervisor": os.getpid(),
            "metrics_dir": str(self.metrics_dir),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge.process.serving", str(theirs.fileno()), str(index)],
            pass_fds=[theirs.fileno()],
            preexec_fn=_child_setup,
        )
        theirs.close()
        record = pickle.dumps(boot)
        # before any connection: the process reads exactly this much first
        ours.sendall(len(record).to_bytes(8, "big") + record)
        ours.setblocking(False)
        self.children[index] = Child(index, proc, ours)
        log.info("process %d started (pid %d)", index, proc.pid)

    def _reap(self) -> None:
        for i, child in enumerate(self.children):
            if child is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            child.channel.close()
            self.children[i] = None
            self._mark_dead(child.proc.pid)
            self.shared.forget(i)
            if self.stopping:
                log.info("process %d (pid %d) exited with %s", i, child.proc.pid, code)
                continue
            if code == CONFIG_EXIT:  # it said why on stderr; a replacement would say it again
                log.error("process %d refused its configuration; stopping the gateway", i)
                self.stopping, self.exit_code = True, 2
                self._deadline = time.monotonic() + self.settings.drain_seconds + 5.0
                self._tell_all(signal.SIGTERM)
                continue
            lived = time.monotonic() - child.started
            pause = 0.0
            if lived < QUICK_DEATH_S:
                pause = min(MAX_BACKOFF_S, max(0.5, 2 * self._backoff.get(i, 0.0)))
            self._backoff[i] = pause
            self._respawn_at[i] = time.monotonic() + pause
            self.restarts.inc()
            log.warning(
                "process %d (pid %d) died (exit %s) after %.1f s; replacing it in %.1f s",
                i,
                child.proc.pid,
                code,
                lived,
                pause,
            )

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for i, at in list(self._respawn_at.items()):
            if self.stopping:
                del self._respawn_at[i]
            elif now >= at:
                del self._respawn_at[i]
                self._spawn(i)

    def _tell_all(self, sig: int) -> None:
        for child in self.children:
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)

    def _kill_all(self, why: str) -> None:
        alive = [c for c in self.children if c is not None and c.proc.poll() is None]
        if alive:
            log.warning("%s: killing %d process(es)", why, len(alive))
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        for child in alive:
            child.proc.wait()
        self._reap()

    # -- connections ----------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, or the client gave up already
                log.warning("accept failed: %s", e)
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    time.sleep(0.05)  # the backlog waits; no spinning on a readable listener
                return
            with conn:
                self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        """Give `conn` to the least loaded serving process that takes it."""
        for child in self._by_load():
            try:
                socket.send_fds(child.channel, [b"c"], [conn.fileno()])
            except (BlockingIOError, OSError):
                continue  # its channel is full (a stuck loop) or it just died: the next one
            child.handed += 1
            self._next = (child.index + 1) % self.n
            return
        log.warning("no serving process can take a connection; closing it")

    def _by_load(self) -> list[Child]:
        """Alive processes, best first: ready and keeping up, then ready, then starting;
        within a class, the least load: the streams or the connections it holds, whichever
        is more (a WebRTC session holds no connection; a WebSocket still upgrading is not yet
        a stream), plus connections handed but not yet taken (so a burst is spread before
        any is taken); then round-robin."""
        members = self.shared.members
        ranked = []
        for child in self.children:
            if child is None:
                continue
            row = members[child.index]
            state = 0 if row["ready"] and not row["saturated"] else 1 if row["ready"] else 2
            load = max(int(row["streams"]), int(row["conns"]))
            load += max(0, child.handed - int(row["received"]))
            ranked.append(((state, load, (child.index - self._next) % self.n), child))
        ranked.sort(key=lambda r: r[0])
        return [c for _, c in ranked]


def _child_setup() -> None:
    """In a serving process before it runs: its own process group (a terminal's ^C reaches only
    the supervisor, which tells them) and HELD_SIGNALS blocked until it can handle them."""
    os.setpgrp()
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
