"""The time source every long-running component reads, injected so tests can run on a fake one.

`time()` is wall-clock epoch seconds (what is written to Redis and compared across processes);
`monotonic()` measures intervals inside one process; `sleep()` waits. A component that takes a
`Clock` reads nothing else, so a test drives it with a fake clock (tests/support/clock.py) and
never waits on real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks of this process. Its only state is none: one instance serves everyone."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()
