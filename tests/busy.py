"""Run a command while every core is kept busy by other processes: `make test-busy`.

    python tests/busy.py [--per-core N] -- COMMAND [ARGS...]

Starts N CPU burners per core this process may run on (one by default): plain Python
processes spinning at normal priority, so the command gets only part of each core, as on a
machine slower than ours or one shared with other work. Runs the command, then stops the
burners whatever happens to it, and exits with the command's status. A burner also stops by
itself when the process that started it is gone, so none outlives an interrupted run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

#: spin, and look up now and then whether the parent is still there
BURNER = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-core", type=int, default=1, help="burners per core (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    cores = len(os.sched_getaffinity(0))
    burners = [
        subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(cores * args.per_core)
    ]
    print(
        f"busy: {len(burners)} CPU burner(s) on {cores} core(s) beside: {' '.join(command)}",
        flush=True,
    )
    started = time.monotonic()
    child: subprocess.Popen[bytes] | None = None
    try:
        child = subprocess.Popen(command)
        return child.wait()
    except KeyboardInterrupt:
        if child is not None:
            child.send_signal(signal.SIGINT)
            return child.wait()
        return 130
    finally:
        for b in burners:
            b.terminate()
        for b in burners:
            b.wait()
        minutes, seconds = divmod(time.monotonic() - started, 60)
        print(f"busy: burners stopped after {int(minutes)} min {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
