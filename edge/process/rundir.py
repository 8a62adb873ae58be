"""Where a supervisor keeps its state (the shared table, the metrics files), so that a supervisor
killed with -9 leaves nothing that the next one does not clean.

Every supervisor of a user has a directory `<name>` under one per-user runtime directory
(`$XDG_RUNTIME_DIR/edge-gateway`, else `<tmp>/edge-gateway-<uid>`), next to a `<name>.lock`
that it holds locked (flock) for its whole life. The lock goes with the process, however it
ends; so a supervisor starting up removes every directory whose lock it can take: those of
supervisors that are gone. Its own it removes itself on an orderly exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def base() -> Path:
    """The per-user directory that holds every supervisor's state, private to the user."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        path = Path(runtime) / "edge-gateway"
    else:
        path = Path(tempfile.gettempdir()) / f"edge-gateway-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise OSError(f"{path} is not a directory of this user's; remove it")
    return path


def sweep(root: Path) -> int:
    """Remove the state of supervisors that are gone (their lock is free); how many."""
    removed = 0
    for lock in root.glob("*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # alive
            continue
        try:
            shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def state_dir() -> Iterator[Path]:
    """A fresh directory for this supervisor, locked while it lives; cleaned of what killed
    supervisors left first, and removed on leaving."""
    root = base()
    sweep(root)
    name = f"supervisor-{os.getpid()}"
    lock = root / f"{name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before the directory: never swept
        path = root / name
        shutil.rmtree(path, ignore_errors=True)  # a pid reused after a crash
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)
