"""The servers a benchmark drives, each a subprocess on a free loopback port: the gateway
(`edge serve`) and the naive in-order server (`edge.bench.naive`); their CPU time from /proc
and what the gateway's /metrics says about batches and stages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edge.metrics import STAGES

#: how long a server may take to report ready (loading and warming every model) on a slow,
#: busy machine
READY_WITHIN_S = 180.0


class ServerError(Exception):
    """A server the bench started did not come up (or a gateway at --url is not there)."""


@dataclass
class Server:
    """A server on `url`; `proc` when this bench started it (None for one given by --url)."""

    url: str
    proc: subprocess.Popen[bytes] | None = None
    grpc: str | None = None  # host:port of its gRPC service, when it has one

    def address(self, transport: str) -> str:
        """Where a client of `transport` connects."""
        if transport != "grpc":
            return self.url
        if self.grpc is None:
            raise ServerError(f"{self.url} has no gRPC address to connect to")
        return f"grpc://{self.grpc}"

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) of the process and its children so far; None when the
        server is not ours to look at."""
        return tree_cpu(self.proc.pid) if self.proc else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(models: Path, port: int, *flags: str) -> list[str]:
    """`edge serve` on 127.0.0.1:`port` with this interpreter, as a separate process."""
    return [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--models", str(models), *flags]  # fmt: skip


def gateway_env(providers: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a benchmarked gateway runs with: quiet logs, no model watcher, no gRPC
    port unless `extra` names one, and no per-client frame-rate limits (every benchmark
    stream comes from one loopback address, so a limit would measure itself, not the
    scheduler)."""
    return {
        **os.environ,
        "EDGE_LOG_LEVEL": "warning",
        "EDGE_WATCH_MODELS_S": "0",
        "EDGE_MAX_FPS_PER_CLIENT": "0",
        "EDGE_MAX_FPS_PER_STREAM": "0",
        "EDGE_MAX_STREAMS_PER_CLIENT": "0",  # every stream comes from loopback
        "EDGE_PROVIDERS": providers,
        "EDGE_SINKS": "",
        "EDGE_GRPC_PORT": "0",  # off unless the caller gives it a port
        **(extra or {}),
    }


@contextlib.contextmanager
def started(
    command: Sequence[str], url: str, env: Mapping[str, str], grpc: str | None = None
) -> Iterator[Server]:
    """Run `command` until the block ends, once its /readyz answers 200."""
    server = Server(url, subprocess.Popen(list(command), env=dict(env)), grpc)
    try:
        asyncio.run(wait_ready(server))
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def gateway(
    models: Path, providers: str, flags: Sequence[str], env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """`edge serve` on a free port (and its gRPC service on another) with `models`, until the
    block ends."""
    port, grpc_port = free_port(), free_port()
    command = serve_command(models, port, "--max-streams", "1000", *flags)
    env = gateway_env(providers, {"EDGE_GRPC_PORT": str(grpc_port), **(env or {})})
    url, grpc = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    with started(command, url, env, grpc) as server:
        yield server


@contextlib.contextmanager
def naive_server(models: Path, model: str, providers: str) -> Iterator[Server]:
    """The naive in-order server (edge/bench/naive.py) for `model`, until the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "edge.bench.naive", "--port", str(port),
               "--models", str(models), "--model", model, "--providers", providers]  # fmt: skip
    with started(command, f"http://127.0.0.1:{port}", os.environ) as server:
        yield server


async def wait_ready(server: Server, within: float = READY_WITHIN_S) -> None:
    """Until the server's /readyz answers 200; ServerError if it exits or takes too long."""
    end = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            if server.proc is not None and server.proc.poll() is not None:
                raise ServerError(f"the server exited with code {server.proc.returncode}")
            try:
                async with http.get(server.url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise ServerError(f"{server.url} was not ready within {within:.0f} s")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children, alive ones."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def scratch_repository(models: Path, names: Sequence[str], max_batch: int | None = None) -> Path:
    """A temporary model repository holding only `names`, copied from `models` (the gateway
    refuses symlinks in its repository), with `max_batch` overridden when given. The caller
    removes it (shutil.rmtree)."""
    root = Path(tempfile.mkdtemp(prefix="edge-bench-models-"))
    for name in names:
        shutil.copytree(models / name, root / name)
        if max_batch:
            toml = root / name / "model.toml"
            line = f"max_batch = {max_batch}"
            text, n = re.subn(r"(?m)^max_batch\s*=.*$", line, toml.read_text())
            toml.write_text(text if n else f"{line}\n{text}")
    return root


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        return await r.text()


async def batch_sizes(url: str, model: str) -> dict[str, float]:
    """From the gateway's /metrics: the mean batch size, the share of batches over one, the
    batch limit, and the mean time per stage in milliseconds (decode, preprocess and
    postprocess per frame; the session call and the whole model run per batch)."""
    from prometheus_client.parser import text_string_to_metric_families

    got: dict[str, float] = {}
    for fam in text_string_to_metric_families(await scrape(url)):
        for smp in fam.samples:
            if smp.labels.get("model") != model:
                continue
            kind = smp.name.rsplit("_", 1)[1]
            if smp.name.startswith("edge_batch_size"):
                got[kind + smp.labels.get("le", "")] = smp.value
            elif smp.name == "edge_batch_limit":
                got["limit"] = smp.value
            elif smp.name.startswith("edge_stage_seconds_") and kind in ("sum", "count"):
                got[f"{smp.labels['stage']}_{kind}"] = smp.value
            elif smp.name.startswith("edge_inference_latency_seconds_") and kind in (
                "sum",
                "count",
            ):
                got[f"run_{kind}"] = smp.value
    count = got.get("count", 0.0) or 1.0
    out = {
        "mean": got.get("sum", 0.0) / count,
        "over_one": 1 - got.get("bucket1.0", 0.0) / count,
        "limit": got.get("limit", 0.0),
    }
    for stage in (*STAGES, "run"):  # run: edge_inference_latency_seconds
        out[f"{stage}_ms"] = 1e3 * got.get(f"{stage}_sum", 0.0) / (got.get(f"{stage}_count") or 1.0)
    return out


async def sink_counts(url: str) -> dict[str, float]:
    """From /metrics: messages published and dropped over every sink, and the sinks connected."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"published": 0.0, "dropped": 0.0, "connected": 0.0}
    names = {
        "edge_sink_published_total": "published",
        "edge_sink_dropped_total": "dropped",
        "edge_sink_connected": "connected",
    }
    for fam in text_string_to_metric_families(await scrape(url)):
        for sample in fam.samples:
            if sample.name in names:
                out[names[sample.name]] += sample.value
    return out
