"""A serving process: the whole gateway app on one event loop, until a signal drains it.

Alone (`--processes 1`) it listens on the port itself. Under the supervisor
(edge/process/supervisor.py)
it is started as `python -m edge.process.serving FD INDEX`: it reads its boot record (settings, its
index, the shared state's file) from the socket FD, then takes every connection the supervisor
hands it over that socket and serves it to its end. When the socket closes (the supervisor is
gone), it drains and exits like on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from edge import __version__
from edge.compat import timeout
from edge.process import descriptors, eventloop
from edge.process.preflight import CONFIG_EXIT, named, tls_context
from edge.process.supervisor import HELD_SIGNALS
from edge.settings import Settings, SettingsError
from edge.sharedmem import Cluster, Shared

log = logging.getLogger("edge")

#: signals that arrived before the event loop took them over (`hold_signals`)
_early: list[int] = []


def hold_signals() -> None:
    """From the first instruction on (the supervisor starts us with these signals blocked):
    note them until `serve` can act on them, so a reload or a stop asked during start-up is
    applied once the process is up instead of killing it."""
    for sig in HELD_SIGNALS:
        signal.signal(sig, lambda signum, _: _early.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


async def serve(settings: Settings, cluster: Cluster | None = None, channel: int = -1) -> None:
    """Serve until SIGTERM/SIGINT; then drain (readiness off at once, streams answered and
    told goaway) within the grace period; a second signal exits at once."""
    from edge.core.services import SERVICES
    from edge.process.app import create_app, drain

    descriptors.raise_limit()
    app = create_app(settings, cluster=cluster)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        # aiohttp arms keepalive_timeout when a connection opens and after each response, and
        # partial data does not reset it: a client gets this long to send a complete request
        # head (slow loris). A request being served, and so an open WebSocket, is never cut.
        keepalive_timeout=settings.request_timeout_s,
    )
    try:
        await runner.setup()  # starts the gRPC server too, which binds grpc_port
    except OSError as e:
        await runner.cleanup()
        where = f"{named('grpc_port')}: cannot listen on {settings.grpc_port}"
        raise SettingsError(f"{where}: {e}") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    intake: Intake | None = None
    if channel < 0:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls_context(settings))
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            where = f"{settings.host}:{settings.port}"
            why = e.strerror or e
            raise SettingsError(f"{named('port')}: cannot listen on {where}: {why}") from None
        where = f"{settings.host}:{settings.port}"
    else:
        assert cluster is not None
        intake = Intake(runner, cluster, channel, tls_context(settings), on_eof=stop.set)
        intake.max_connections = settings.max_connections
        where = f"process {cluster.index} of {cluster.size}, pid {os.getpid()}"
    log.info(
        "edge-gateway %s serving (%s), models in %s, %d worker(s)",
        __version__,
        where,
        settings.models,
        settings.worker_count,
    )
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    services = app[SERVICES]
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        loop.add_signal_handler(sig, services.reload.set)
    for asked in _early:  # while we were starting
        (services.reload.set if asked in (signal.SIGHUP, signal.SIGUSR1) else stop.set)()
    _early.clear()
    await stop.wait()
    log.info("draining for at most %g s", settings.drain_seconds)
    try:
        async with timeout(settings.drain_seconds):
            await drain(app)
            await runner.cleanup()
    except asyncio.TimeoutError:
        log.warning("drain did not finish within %g s; exiting", settings.drain_seconds)
    finally:
        if intake is not None:
            await intake.close()


class Intake:
    """Takes the connections the supervisor hands over and gives each to the app's server,
    as if this process had accepted it. Owns the tasks that set connections up."""

    def __init__(
        self,
        runner: web.AppRunner,
        cluster: Cluster,
        channel: int,
        ssl_context: ssl.SSLContext | None,
        on_eof: Any,
    ) -> None:
        self._runner, self._cluster, self._ssl, self._on_eof = runner, cluster, ssl_context, on_eof
        self._sock = socket.socket(fileno=channel)
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_connections = 0  # 0: from the open-file limit (edge.process.descriptors)
        self._baseline = descriptors.open_now()
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self._counter = asyncio.create_task(self._count(), name="intake-count")

    async def _count(self) -> None:
        """Keep this process's connection count fresh as connections close (the supervisor
        hands new ones to the process with the fewest)."""
        server = self._runner.server
        assert server is not None
        while True:
            self._cluster.shared.me["conns"] = len(server.connections)
            await asyncio.sleep(0.02)

    def _readable(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self._sock, 256, 64)
        except BlockingIOError:
            return
        except OSError:
            data, fds, flags = b"", [], 0
        if not data:  # end of file: the supervisor is gone
            self._loop.remove_reader(self._sock.fileno())
            log.warning("the supervisor closed our channel; draining")
            self._on_eof()
            return
        if flags & socket.MSG_CTRUNC or len(fds) < len(data):
            # Out of descriptors: the kernel dropped them (and so closed those connections).
            self._cluster.shared.me["received"] += len(data) - len(fds)
            log.warning("out of open files: %d connection(s) lost", len(data) - len(fds))
        server = self._runner.server
        assert server is not None
        cap = descriptors.connection_cap(self.max_connections, self._baseline)
        for fd in fds:
            conn = socket.socket(fileno=fd)
            if len(server.connections) + len(self._tasks) >= cap:
                self._cluster.shared.me["received"] += 1
                descriptors.refuse(conn, plain=self._ssl is None)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        me = self._cluster.shared.me
        me["received"] += 1
        server = self._runner.server
        assert server is not None
        try:
            await self._loop.connect_accepted_socket(server, conn, ssl=self._ssl)
        except (OSError, ssl.SSLError) as e:  # a client that left, or a bad TLS handshake
            log.debug("connection not taken: %r", e)
            conn.close()
        me["conns"] = len(server.connections)

    async def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        tasks = [*self._tasks, self._counter]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sock.close()


def _read_boot(fd: int) -> dict[str, Any]:
    """The supervisor's boot record: its length (8 bytes), then one pickle, written before
    anything else on the socket (a private socket pair from our own parent). Read to its exact
    end, so the first connection handed over stays in the socket for the intake."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setblocking(True)
        n = int.from_bytes(_read_exactly(sock, 8), "big")
        boot: dict[str, Any] = pickle.loads(_read_exactly(sock, n))
        return boot
    finally:
        sock.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit(
                "edge.process.serving: the supervisor closed the channel before booting"
            )
        buf += chunk
    return buf


def _die_with(supervisor: int) -> None:
    """If the supervisor is killed, so is this process, at once, as if the gateway had been one
    process (a container's or a unit's whole group goes the same way). An orderly supervisor
    exit drains its processes first; this is for a supervisor that could not."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # it died before the line above
        raise SystemExit("edge.process.serving: the supervisor is gone")


#: prctl(2): the signal this process gets when its parent dies (Linux)
PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    hold_signals()
    fd = int(argv[1])
    boot = _read_boot(fd)
    settings: Settings = boot["settings"]
    from edge import logs

    logs.setup(settings.log_level, settings.log_format)
    size = boot["size"]
    shared = Shared(size, boot["capacity"], boot["index"], Path(boot["shared"]))
    cluster = Cluster(
        index=boot["index"],
        size=size,
        shared=shared,
        supervisor_pid=boot["supervisor"],
        metrics_dir=Path(boot["metrics_dir"]),
    )
    _die_with(boot["supervisor"])
    shared.me["pid"] = os.getpid()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            eventloop.run(serve(settings, cluster, fd), settings.uvloop)
    except SettingsError as e:  # the supervisor stops rather than replace us
        print(f"edge: bad setting: {e}", file=sys.stderr)
        return CONFIG_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
