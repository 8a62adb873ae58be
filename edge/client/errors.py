"""The client's errors: each says in one line what went wrong and carries the exit code
`edge stream` ends with (docs/client.md)."""

from __future__ import annotations

#: exit codes of `edge stream`
EXIT_FAILED = 1  # anything else that ended the stream
EXIT_USAGE = 2  # a bad URL or option
EXIT_SOURCE = 3  # the source cannot be opened or read
EXIT_UNREACHABLE = 4  # no gateway answers at the URL
EXIT_REFUSED = 5  # the gateway refused for good: a bad token, a foreign origin, an unknown model


class ClientError(Exception):
    """A failure the client cannot retry its way out of; `str()` is one line for a person."""

    exit_code = EXIT_FAILED


class UsageError(ClientError):
    """A bad option (the CLI's exit code 2)."""

    exit_code = EXIT_USAGE


class BadUrl(UsageError):
    pass


class SourceError(ClientError):
    exit_code = EXIT_SOURCE


class Unreachable(ClientError):
    """Nothing answered (connection refused, no such host, a timeout, a TLS failure)."""

    exit_code = EXIT_UNREACHABLE


class Refused(ClientError):
    """The gateway answered the upgrade with an HTTP error. 429 and 503 are retried after
    their Retry-After; the others end the stream."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.status in (429, 503)


class Rejected(ClientError):
    """The gateway answered the stream's settings (its config message) with an error."""

    exit_code = EXIT_REFUSED
