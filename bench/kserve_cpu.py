"""KServe v2's CPU per request: the serving process's CPU time for each answered request, over
REST (binary tensor extension) and gRPC (ModelInfer), with tritonclient as the client.

Compares checkouts of the gateway in one run (`--checkout DIR`, repeatable; default this
one): each is started in turn (`edge serve --processes 1`, its code from DIR), driven by
--clients concurrent clients for --seconds per protocol, its process's CPU time read from
/proc before and after; --rounds alternates the checkouts so a drift of the machine falls on
each alike. Prints CPU ms per request and requests/s, per checkout and protocol, and each
checkout's CPU per request as a ratio to the first's.

    python bench/kserve_cpu.py --checkout /path/to/old --checkout . --image face.jpg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as tgrpc
import tritonclient.http.aio as thttp

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(checkout: Path, models: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(checkout), "EDGE_MAX_FPS_PER_CLIENT": "0"}
    cmd = [sys.executable, "-m", "edge", "serve", "--processes", "1", "--port", str(port)]
    cmd += ["--grpc-port", str(grpc_port), "--models", str(models)]
    proc = subprocess.Popen(cmd, env=env, cwd=checkout, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port, grpc_port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{checkout}: the gateway exited ({proc.returncode})")
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{checkout}: not ready within 120 s")


async def _drive(make, seconds: float, clients: int) -> int:
    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        client, call = make()
        try:
            while time.monotonic() < stop:
                await call(client)
                done += 1
        finally:
            await client.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return done


def _rest(port: int, model: str, data: bytes):
    def make():
        client = thttp.InferenceServerClient(f"127.0.0.1:{port}")
        i = thttp.InferInput("image", [1], "BYTES")
        i.set_data_from_numpy(np.array([data], dtype=object), binary_data=True)
        out = [thttp.InferRequestedOutput("boxes", binary_data=True)]
        return client, lambda c: c.infer(model, [i], outputs=out)

    return make


def _grpc(port: int, model: str, data: bytes):
    def make():
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
        i = tgrpc.InferInput("image", [1], "BYTES")
        i.set_data_from_numpy(np.array([data], dtype=object))
        out = [tgrpc.InferRequestedOutput("boxes")]
        return client, lambda c: c.infer(model, [i], outputs=out)

    return make


def measure(
    checkout: Path, args: argparse.Namespace, data: bytes
) -> dict[str, tuple[float, float]]:
    proc, port, grpc_port = _start(checkout, args.models)
    out = {}
    try:
        for name, make in (
            ("rest", _rest(port, args.model, data)),
            ("grpc", _grpc(grpc_port, args.model, data)),
        ):
            asyncio.run(_drive(make, 1.0, args.clients))  # warm: connections, first runs
            cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
            n = asyncio.run(_drive(make, args.seconds, args.clients))
            cpu, wall = _cpu_s(proc.pid) - cpu0, time.monotonic() - t0
            out[name] = (cpu / n * 1e3, n / wall)
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", type=Path, action="append", help="a checkout (repeatable)")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="blazeface")
    p.add_argument("--image", type=Path, required=True, help="the JPEG every request carries")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    data = args.image.read_bytes()
    runs: dict[Path, dict[str, list[tuple[float, float]]]] = {c: {} for c in checkouts}
    for r in range(args.rounds):
        for c in checkouts:
            for proto, figures in measure(c, args, data).items():
                runs[c].setdefault(proto, []).append(figures)
                print(f"round {r + 1} {c} {proto}: {figures[0]:.3f} ms CPU/request, "
                      f"{figures[1]:.1f} requests/s", file=sys.stderr)  # fmt: skip
    first = checkouts[0]
    print("| checkout | protocol | CPU per request (ms, median) | requests/s (median) | ratio |")
    print("|---|---|---|---|---|")
    for c in checkouts:
        for proto, figures in runs[c].items():
            cpu = statistics.median(f[0] for f in figures)
            rate = statistics.median(f[1] for f in figures)
            base = statistics.median(f[0] for f in runs[first][proto])
            print(f"| {c} | {proto} | {cpu:.3f} | {rate:.1f} | {cpu / base:.2f}x |")


if __name__ == "__main__":
    main()
