"""How evenly do connections spread over serving processes? The measurement behind the
supervisor's choice to accept connections itself (docs/architecture.md, "Several processes").

Two ways, same machine, same run:
  shared: P asyncio processes serve one inherited listening socket (what pre-forked servers
          such as gunicorn and uvicorn do); the kernel wakes them all, the first to run
          accepts what is queued;
  gateway: `edge serve --processes P`: the supervisor accepts and hands each connection to
          the least loaded process.
Each opens N WebSocket-like long-lived connections in bursts (all at once, as clients
reconnecting after a restart do), R rounds half a second apart (so the previous round's
connections have closed), and reports the streams per process: the busiest process's share
against an even one (1.00 is even).

    python bench/accept_balance.py --processes 2 --connections 8 --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shared_server(sock: socket.socket, index: int) -> None:
    """One of the P processes: answers each connection with its index, then holds it."""

    async def serve() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(f"{index}\n".encode())
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()

        server = await asyncio.start_server(handle, sock=sock, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


async def burst_shared(port: int, n: int) -> list[int]:
    await asyncio.sleep(0.5)
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n)))
    got = [int((await r.readline()).decode()) for r, _ in conns]
    for _, w in conns:
        w.close()
    return got


async def burst_gateway(url: str, n: int) -> list[int]:
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as http:
        ws_url = url.replace("http", "ws") + "/v1/stream"
        socks = await asyncio.gather(*(http.ws_connect(ws_url) for _ in range(n)))
        got = [(await ws.receive_json())["process"] for ws in socks]
        for ws in socks:
            await ws.close()
    return got


def spread(rounds: list[list[int]], p: int) -> tuple[float, float]:
    """Mean and worst over rounds of (busiest process's streams) / (streams / P)."""
    ratios = [max(r.count(i) for i in range(p)) / (len(r) / p) for r in rounds]
    return sum(ratios) / len(ratios), max(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    p, n = args.processes, args.connections

    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = sock.getsockname()[1]
    pids = []
    for i in range(p):
        pid = os.fork()
        if pid == 0:
            shared_server(sock, i)
            os._exit(0)
        pids.append(pid)
    try:
        shared = [asyncio.run(burst_shared(port, n)) for _ in range(args.rounds)]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        sock.close()

    from edge.bench.servers import Server, free_port, serve_command, wait_ready

    gport = free_port()
    url = f"http://127.0.0.1:{gport}"
    env = {**os.environ, "EDGE_LOG_LEVEL": "warning", "EDGE_WATCH_MODELS_S": "0"}
    env["EDGE_GRPC_PORT"] = "0"
    proc = subprocess.Popen(
        serve_command(ROOT / "models", gport, "--processes", str(p), "--max-streams", "1000"),
        env=env,
    )
    try:
        asyncio.run(wait_ready(Server(url, proc)))
        gateway = [asyncio.run(burst_gateway(url, n)) for _ in range(args.rounds)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    print(f"{p} processes, bursts of {n} connections, {args.rounds} rounds")
    for name, rounds in (("shared socket", shared), ("gateway (hand-off)", gateway)):
        mean, worst = spread(rounds, p)
        example = [rounds[0].count(i) for i in range(p)]
        print(
            f"  {name}: busiest process / even share: mean {mean:.2f}, worst {worst:.2f} "
            f"(first round per process: {example})"
        )


if __name__ == "__main__":
    main()
