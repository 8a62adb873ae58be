"""The client for plain scripts, without asyncio:

    with edge.client.connect_sync("ws://gw:8080", model="blazeface") as s:
        for reply in s.stream(jpeg_bytes_iterable):
            print(reply)

The session runs on an event loop in a thread this object owns; `stream()` hands its replies
over one at a time, so the loop keeps reading the socket (and answering its pings) while the
script works on a reply. The frames iterable is read on a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from edge.client.replies import Reply
from edge.client.session import Session, connect


class SyncSession:
    def __init__(self, session: Session) -> None:
        self.session = session
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edge-client-loop", daemon=True
        )
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def open(self) -> None:
        self._call(self.session.open())

    def close(self) -> None:
        """Close the session and stop the loop's thread; idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._call(self.session.close())
            self._call(self._loop.shutdown_default_executor())  # threads that read frames
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncSession:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tally(self) -> Any:
        return self.session.tally

    def stream(self, frames: Iterable[Any], *, live: bool = False) -> Iterator[Reply]:
        """As `Session.stream`, one reply per `next()`."""
        agen = self.session.stream(frames, live=live)
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())


def connect_sync(url: str | list[str], **kw: Any) -> SyncSession:
    """`connect()` for code without an event loop; use with `with`."""
    return SyncSession(connect(url, **kw))
