"""What Python 3.10 lacks and 3.11 has, in one place, so the rest reads as modern Python.

- ``timeout``: ``asyncio.timeout`` (3.11), else the ``async-timeout`` package it came from.
  Both raise ``asyncio.TimeoutError``, which is the builtin ``TimeoutError`` only from 3.11 on:
  code that catches a timeout from asyncio catches ``asyncio.TimeoutError``.
- ``tomllib``: the standard library's (3.11), else ``tomli``, the package it came from.
"""

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout

    import tomllib
else:  # pragma: no cover - exercised by `make test-pythons`
    import tomli as tomllib
    from async_timeout import timeout

__all__ = ["timeout", "tomllib"]
