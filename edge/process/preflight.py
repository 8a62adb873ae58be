"""What `edge serve` checks before any serving process starts: the TLS files load, the model
repository can be read, and the HTTP and gRPC ports are free. Each failure is a
`SettingsError` naming its setting, which the entry point prints as one line and exits 2 on,
so a configuration mistake never reaches a serving process, let alone a restart loop.

A serving process that still fails at start-up for such a reason (a port taken between this
check and its bind) exits with `CONFIG_EXIT`; the supervisor then stops instead of replacing it.
"""

from __future__ import annotations

import os
import socket
import ssl

from edge.settings import Settings, SettingsError, flag, variable

#: a serving process's exit code for a configuration error at start-up (EX_CONFIG, sysexits.h)
CONFIG_EXIT = 78


def check(settings: Settings) -> None:
    """Raise `SettingsError` for the first thing that would stop the gateway serving."""
    tls_context(settings)
    models = settings.models
    if not models.is_dir():
        raise SettingsError(
            f"{named('models')}: {models} is not a directory; run "
            f"`edge models pull --models {models}`, or point it at your model repository"
        )
    if not os.access(models, os.R_OK | os.X_OK):
        raise SettingsError(f"{named('models')}: {models} cannot be read by this user")
    _free(settings.host, settings.port, "port")
    _free(settings.host, settings.grpc_port, "grpc_port")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or None without `tls_cert`; a file that is missing or does
    not load is a `SettingsError`."""
    if settings.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except OSError as e:  # ssl.SSLError is an OSError too
        raise SettingsError(
            f"{named('tls_cert')}, {named('tls_key')}: cannot load {settings.tls_cert} "
            f"and {settings.tls_key}: {e.strerror or getattr(e, 'reason', None) or e}"
        ) from None
    return ctx


def named(name: str) -> str:
    """A setting as a person sets it: its flag and its variable."""
    return f"{flag(name)} / {variable(name)}"


def _free(host: str, port: int, name: str) -> None:
    """Bind `port` plainly, without SO_REUSEPORT, and let it go: that fails while another
    process listens there, even one that shares it with SO_REUSEPORT among its own processes."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen()
    except OSError as e:
        raise SettingsError(
            f"{named(name)}: cannot listen{' for gRPC' if name == 'grpc_port' else ''} on "
            f"{host}:{port}: {e.strerror or e}; another "
            "process holds it: stop it, or choose a free port"
        ) from None
