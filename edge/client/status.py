"""The live status line of `edge stream` (rich), drawn on stderr only when it is a terminal."""

from __future__ import annotations

import time
from collections import deque
from types import TracebackType

try:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text
except ImportError:  # no status line without the `client` extra; streaming works all the same
    Console = None  # type: ignore[assignment,misc]

from edge.client.tally import Tally

#: the rates are over this many seconds of recent history
RATE_WINDOW_S = 3.0


class StatusLine:
    def __init__(self, tally: Tally, console: Console | None = None) -> None:
        self.tally = tally
        self.console = console or (Console(stderr=True) if Console is not None else None)
        self.enabled = self.console is not None and self.console.is_terminal
        self.where = ""
        self._history: deque[tuple[float, int, int]] = deque()
        self._live: Live | None = None

    def __enter__(self) -> StatusLine:
        if self.enabled:
            self._live = Live(
                self.render(), console=self.console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(t, e, tb)
            self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def rates(self) -> tuple[float, float]:
        """(frames sent/s, results/s) over the last RATE_WINDOW_S."""
        now, t = time.monotonic(), self.tally
        self._history.append((now, t.sent, t.results))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW_S:
            self._history.popleft()
        t0, sent0, results0 = self._history[0]
        span = now - t0
        if span <= 0:
            return 0.0, 0.0
        return (t.sent - sent0) / span, (t.results - results0) / span

    def render(self) -> Text:
        t = self.tally
        sent_s, results_s = self.rates()
        p = t.latency_percentiles()
        latency = "-" if p is None else f"{p[0]:.0f}/{p[1]:.0f} ms"
        drops = " ".join(f"{k} {v}" for k, v in sorted(t.dropped.items())) or "0"
        text = Text()
        text.append(f"sent {sent_s:5.1f}/s  results {results_s:5.1f}/s  ", style="bold")
        text.append(f"p50/p95 {latency}  skipped {sum(t.skipped.values())}  ")
        text.append(f"dropped {drops}  errors {t.errors}  reconnects {t.reconnects}")
        if self.where:
            text.append(f"  {self.where}", style="dim")
        return text
