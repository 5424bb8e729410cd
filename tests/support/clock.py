"""A fake implementation of the contract's `Clock` for tests of the control loop."""

from __future__ import annotations

import asyncio
import time


class FakeClock:
    """A clock that moves only when told: `advance`, or a `sleep`, which returns at once.

    Wall and monotonic time move together. Starts at `start` (default: the real time now, so
    values written to Redis look plausible next to real ones).
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._offset = self._now - 1_000_000.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is
