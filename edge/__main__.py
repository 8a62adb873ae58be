import signal
import sys

if sys.argv[1:2] == ["serve"]:
    # A reload asked while the gateway starts must not kill it (the default action of SIGHUP
    # and SIGUSR1 is to exit): ignored until the supervisor or the serving loop takes them over.
    for _sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(_sig, signal.SIG_IGN)

from edge.cli import main  # noqa: E402

sys.exit(main())
