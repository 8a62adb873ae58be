"""`edge stream SOURCE --url ws://host:8080 ...`: a source streamed to a gateway, one JSON line
per reply, a live status line, optionally an annotated video. The first Ctrl-C (or SIGTERM)
stops reading the source and waits for the frames in flight; the second ends at once.

Errors a person can fix end the command with one line on stderr and the exit codes of
edge.client.errors, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from edge.client import replies
from edge.client.connection import stream_url
from edge.client.errors import EXIT_USAGE, ClientError, Rejected, UsageError
from edge.client.mailbox import Frame
from edge.client.session import Session
from edge.client.sources import Encoding, Source, open_source


@dataclass(frozen=True)
class StreamOptions:
    source: str
    urls: tuple[str, ...]
    model: str | None = None
    token: str | None = None
    fps: float | None = None
    size: tuple[int, int] | None = None
    quality: int = 85
    out: str | None = None  # a path, or "-" for stdout
    annotate: Path | None = None
    ca: Path | None = None
    threshold: float | None = None
    loop: bool = False
    transport: str = "websocket"  # or webrtc


def main(opts: StreamOptions) -> int:
    """Run the command; returns its exit code."""
    try:
        for url in opts.urls:
            stream_url(url)
        if opts.ca is not None and not opts.ca.is_file():
            raise UsageError(f"no CA file {opts.ca}")
        if opts.annotate is not None and opts.transport != "websocket":
            raise UsageError("--annotate needs --transport websocket (the frames' JPEGs)")
        if opts.annotate is not None:
            _check_writable(opts.annotate)
        if opts.threshold is not None and not 0 <= opts.threshold <= 1:
            raise UsageError(f"--threshold {opts.threshold}: expected a score from 0 to 1")
        if opts.transport == "webrtc":
            _need_aiortc()
        source = open_source(opts.source, Encoding(opts.size, opts.quality), opts.fps, opts.loop)
    except ClientError as e:
        return _fail(e, getattr(e, "exit_code", EXIT_USAGE))
    try:
        out = _open_out(opts.out)
    except OSError as e:
        return _fail(f"cannot write {opts.out}: {e.strerror or e}", EXIT_USAGE)
    try:
        return asyncio.run(_stream(opts, source, out))
    except ClientError as e:
        return _fail(e, e.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    finally:
        if out is not None:
            out.close()


def _need_aiortc() -> None:
    try:
        import aiortc  # noqa: F401
    except ImportError:
        raise UsageError(
            "--transport webrtc needs aiortc: pip install 'edge-gateway[webrtc]'"
        ) from None


def _check_writable(path: Path) -> None:
    """Refuse a path the annotated video could not be written to, before streaming."""
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: no folder {folder}")
    target = path if path.exists() else folder
    if path.is_dir() or not os.access(target, os.W_OK):
        raise UsageError(f"cannot write {path}: permission denied or not a file")


def _fail(e: object, code: int) -> int:
    print(f"edge stream: {e}", file=sys.stderr)
    return code


class _Stdout:
    """stdout as it is when written to: the status line (rich) swaps in its own while it
    draws, so that JSON lines go above it instead of through it."""

    def write(self, text: str) -> None:
        sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        pass


def _open_out(path: str | None) -> IO[str] | _Stdout | None:
    if path is None:
        return None
    if path == "-":
        return _Stdout()
    return open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed by main()


async def _stream(opts: StreamOptions, source: Source, out: IO[str] | _Stdout | None) -> int:
    from edge.client.status import StatusLine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        connected = session.tally.connections > 0
        if (stop.is_set() or not connected) and main_task is not None:
            main_task.cancel()  # the second signal, or never connected: stop now
        stop.set()

    kind = Session
    if opts.transport == "webrtc":
        from edge.client.rtc import RtcSession

        kind = RtcSession
    session = kind(
        list(opts.urls), model=opts.model, token=opts.token, ca=opts.ca, threshold=opts.threshold
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    annotator = _annotator(opts.annotate)
    status = StatusLine(session.tally)
    code = 0
    try:
        await session.open(connect=False)  # stream() connects, and reports its retries
        with status:
            async with contextlib.aclosing(
                session.stream(
                    _until(source.frames(raw=kind is not Session), stop), live=source.live
                )
            ) as replies_:
                async for reply in replies_:
                    _write(out, reply.as_json())
                    if isinstance(reply, replies.Error) and reply.seq is None:
                        raise Rejected(f"the gateway refused: {reply.message} ({reply.code})")
                    if isinstance(reply, replies.Hello):
                        status.where = f"{reply.session} at {_host(reply)}"
                    if annotator is not None and isinstance(reply, replies.Result):
                        annotator.put(reply, time.monotonic())
                    status.refresh()
    except asyncio.CancelledError:
        code = 130
    finally:
        await session.close()
        if annotator is not None:
            await asyncio.to_thread(annotator.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    summary = {"type": "summary", **session.tally.as_dict()}
    if annotator is not None:
        summary["annotated"] = {"written": annotator.written, "left_out": annotator.left_out}
        if annotator.error is not None:
            raise ClientError(f"cannot write {opts.annotate}: {annotator.error}")
    _write(out, summary)
    if status.enabled and status.console is not None:
        status.console.print(_summary_line(summary))
    return code


def _annotator(path: Path | None) -> Any:
    if path is None:
        return None
    from edge.client.annotate import Annotator

    annotator = Annotator(path)
    annotator.start()
    return annotator


async def _until(frames: AsyncIterator[Frame], stop: asyncio.Event) -> AsyncIterator[Frame]:
    """The source's frames until `stop` is set (the frame being read then is not taken)."""
    it = frames.__aiter__()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            nxt = asyncio.ensure_future(it.__anext__())
            await asyncio.wait({nxt, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                return
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return
    finally:
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        with contextlib.suppress(Exception):
            await it.aclose()  # type: ignore[attr-defined]


def _write(out: IO[str] | _Stdout | None, obj: dict[str, Any]) -> None:
    if out is not None:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()


def _host(reply: replies.Reply) -> str:
    return urlsplit(str(reply.raw.get("url", ""))).netloc


def _summary_line(s: dict[str, Any]) -> str:
    return (
        f"read {s['frames_read']} · sent {s['sent']} · skipped {s['skipped']} · "
        f"results {s['results']} · dropped {sum(s['dropped'].values())} · errors {s['errors']} · "
        f"reconnects {s['reconnects']}"
    )
