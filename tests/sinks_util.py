"""Real brokers for the sink tests: Debian's mosquitto and nats-server, each started by the test
on a free loopback port (never as a system service), stopped and started again on that port;
subscribers that collect what a broker delivers; lockstep stream clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import nats
import pytest

from tests.conftest import free_port
from tests.wsclient import Books, next_reply

#: one message as a subscriber got it: (topic or subject, the decoded payload)
Got = list[tuple[str, dict[str, Any]]]


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(
            f"{name} is not installed: `make brokers` installs Debian's mosquitto and "
            "nats-server (the tests start their own, on loopback ports)"
        )
    return path


class Broker:
    """A broker process of the test's own; `stop` then `start` keeps its port."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv, self.port, self.log = argv, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 20.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.argv[0]} did not listen: {self.log.read_text()[-800:]}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def mosquitto(
    tmp_path: Path, users: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None
) -> Broker:
    """mosquitto on a free loopback port: anonymous, or only `users` (name: password); over
    TLS with `tls` (certificate, key)."""
    port = free_port()
    conf = tmp_path / f"mosquitto-{port}.conf"
    lines = [f"listener {port} 127.0.0.1", "persistence false", "user root"]
    if tls:
        lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
    if users:
        passwd = tmp_path / f"mosquitto-{port}.passwd"
        for i, (name, password) in enumerate(users.items()):
            create = ["-c"] if i == 0 else []
            cmd = [_binary("mosquitto_passwd"), *create, "-b", str(passwd), name, password]
            subprocess.run(cmd, check=True, capture_output=True)
        lines += ["allow_anonymous false", f"password_file {passwd}"]
    else:
        lines += ["allow_anonymous true"]
    conf.write_text("\n".join(lines) + "\n")
    return Broker([_binary("mosquitto"), "-c", str(conf)], port, tmp_path / f"mosquitto-{port}.log")


def nats_server(tmp_path: Path, *extra: str, jetstream: bool = False) -> Broker:
    port = free_port()
    argv = [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), *extra]
    if jetstream:
        argv += ["-js", "-sd", str(tmp_path / f"nats-{port}")]
    return Broker(argv, port, tmp_path / f"nats-{port}.log")


@contextlib.asynccontextmanager
async def mqtt_messages(
    port: int, topic: str = "edge/#", tls: ssl.SSLContext | None = None
) -> AsyncIterator[Got]:
    """Everything published under `topic` from now on, as it arrives."""
    got: Got = []
    async with aiomqtt.Client("127.0.0.1", port, tls_context=tls) as client:
        await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                got.append((str(m.topic), json.loads(m.payload)))

        task = asyncio.create_task(read())
        try:
            yield got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@contextlib.asynccontextmanager
async def nats_messages(port: int, subject: str = "edge.>") -> AsyncIterator[Got]:
    got: Got = []
    nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)

    async def on_message(m: Any) -> None:
        got.append((m.subject, json.loads(m.data)))

    try:
        await nc.subscribe(subject, cb=on_message)
        yield got
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def lockstep(
    ws: aiohttp.ClientWebSocketResponse,
    books: Books,
    frames: list[bytes],
    until: Callable[[int], bool],
) -> None:
    """Send a frame, wait for its reply, and again, until `until(seq)` (seqs go on from the
    frames `books` has). One frame in flight: none is superseded, each gets a result."""
    seq = len(books.sent_at)
    while not until(seq):
        books.sent_at[seq] = time.monotonic()
        await ws.send_bytes(frames[seq % len(frames)])
        books.record(await next_reply(ws, within=60))
        seq += 1


def socket_results(clients: list[tuple[Any, Books]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(session, seq) -> the result message each stream's socket received."""
    out = {}
    for _, books in clients:
        for seq, msgs in books.replies.items():
            if msgs[0]["type"] == "result":
                out[(books.hello["session"], seq)] = msgs[0]
    return out


def published(got: Got) -> dict[tuple[str, int], dict[str, Any]]:
    """(session, seq) -> the reply inside each message a subscriber got; a duplicate fails."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for topic, msg in got:
        key = (msg["session"], msg["seq"])
        assert key not in out, f"published twice: {key} on {topic}"
        out[key] = msg["reply"]
    return out


async def until(cond: Callable[[], bool], within: float, what: str) -> None:
    """Wait for `cond`; the deadline is a safety net sized by the caller, not a speed check."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {within:g} s for: {what}")
        await asyncio.sleep(0.02)
