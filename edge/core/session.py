"""What the gateway can ask of any open stream, whatever its transport."""

from __future__ import annotations

from abc import ABC, abstractmethod

from edge.core.stream import Stream


class StreamSession(ABC):
    stream: Stream | None

    @abstractmethod
    async def goaway(self, retry_after_ms: int) -> None:
        """Drain: answer every frame taken, say goaway, close as "going away"."""
