"""The `edge` command's first instructions (the console script and `python -m edge` both start
here): before the heavy imports, a reload asked while `edge serve` starts must not kill it
(the default action of SIGHUP and SIGUSR1 is to exit), so both are ignored until the supervisor
or the serving loop takes them over; then the command line runs (edge.cli)."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
    from edge.cli import main as cli

    return cli()
