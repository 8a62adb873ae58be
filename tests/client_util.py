"""Helpers for the device client's tests: a video made from the sample photos, `edge stream`
as a subprocess, and the books its JSON lines must balance."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from tests.imagedata import sample_image
from tests.pace import SLACK, deadline, start_cost, wait_until


def make_video(path: Path, frames: int, fps: int = 10, photo: str = "astronaut.png") -> Path:
    """An mp4 of `frames` frames of the photo (512 x 512), written with PyAV."""
    picture = np.asarray(Image.open(sample_image(photo)).convert("RGB"))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@dataclass
class StreamRun:
    """`edge stream` running as a separate process, as a device runs it."""

    proc: asyncio.subprocess.Process
    out: Path

    def lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        text = self.out.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        return [json.loads(line) for line in complete.splitlines()]

    def of_type(self, kind: str, connection: int | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self.lines()
            if m["type"] == kind and (connection is None or m.get("connection") == connection)
        ]

    async def wait_for(self, kind: str, n: int, connection: int | None = None) -> None:
        def enough() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"edge stream exited {self.proc.returncode} early")
            return len(self.of_type(kind, connection)) >= n

        await wait_until(
            enough,
            deadline(frames=n) + 20,  # + the longest backoff a reconnect may wait
            lambda: f"{n} {kind} lines (connection {connection}); got {Counter(self.types())}",
        )

    def types(self) -> list[str]:
        return [m["type"] for m in self.lines()]

    async def stop(self) -> tuple[int, str]:
        """Ctrl-C: the source stops, the frames in flight are answered; (exit code, stderr)."""
        self.proc.send_signal(signal.SIGINT)
        return await self.finish()

    async def finish(self, frames: int = 50) -> tuple[int, str]:
        """Wait for the run to end: (exit code, stderr). Allowed: starting the process (a
        finish may be the whole run) and `frames` frames, at their costs measured here."""
        assert self.proc.stderr is not None
        within = SLACK * start_cost() + deadline(frames=frames)
        try:
            stderr = await asyncio.wait_for(self.proc.stderr.read(), within)
            rc = await asyncio.wait_for(self.proc.wait(), deadline())
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("edge stream did not finish") from None
        return rc, stderr.decode()


#: every `edge stream` started, so that a failed test leaves none running (stop_all)
RUNNING: list[StreamRun] = []


async def stop_all() -> None:
    for run in RUNNING:
        if run.proc.returncode is None:
            run.proc.kill()
            await run.proc.wait()
    RUNNING.clear()


async def start_stream(*args: str, out: Path) -> StreamRun:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge",
        "stream",
        *args,
        "--out",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    run = StreamRun(proc, out)
    RUNNING.append(run)
    return run


def check_books(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """What every `edge stream` run must show: every frame read was sent or skipped, every frame
    sent was answered exactly once (by the gateway, or `lost` by the client when its connection
    ended first), and the summary says the same. Returns the summary."""
    assert lines and lines[-1]["type"] == "summary", lines[-3:]
    summary = lines[-1]
    assert summary["frames_read"] == summary["sent"] + summary["skipped"], summary
    answers: Counter[tuple[int, int]] = Counter()  # (connection, frame) -> replies
    for m in lines:
        if m["type"] in ("result", "error") and m.get("frame") is not None:
            answers[(m["connection"], m["frame"])] += 1
        elif m["type"] == "dropped":
            for f in m["frames"]:
                answers[(m["connection"], f)] += 1
    twice = [k for k, n in answers.items() if n > 1]
    assert not twice, f"frames answered more than once: {twice}"
    frames = Counter(f for _, f in answers)
    assert all(n == 1 for n in frames.values()), "a frame was sent on two connections"
    assert len(answers) == summary["sent"], (len(answers), summary)
    assert summary["unanswered"] == 0, summary
    kinds = Counter(m["type"] for m in lines)
    assert kinds["result"] == summary["results"], (kinds, summary)
    return summary


def hellos(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {m["connection"]: m for m in lines if m["type"] == "hello"}


def check_fresh(lines: list[dict[str, Any]]) -> None:
    """Nothing stale after a reconnect: every frame sent on a connection was read from the
    source after that connection opened."""
    opened = {c: h["frames_read"] for c, h in hellos(lines).items()}
    for m in lines:
        c = m.get("connection")
        if c is None or c < 2:
            continue
        sent = [m["frame"]] if m["type"] in ("result", "error") else m.get("frames", [])
        for f in sent:
            if f is not None:
                assert f >= opened[c], f"frame {f} read before connection {c} opened: {m}"
