"""The control loop against real Redis and an in-memory runtime of heartbeat-only shards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.loop import CAPACITY
from support.memruntime import MemoryRuntime

from autoscaler.daemon import Daemon


@pytest.fixture
async def runtime(redis_url: str) -> AsyncIterator[MemoryRuntime]:
    rt = MemoryRuntime(redis_url, capacity=CAPACITY)
    yield rt
    await rt.close()


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    """Daemons opened by a test are closed after it."""
    opened: list[Daemon] = []
    yield opened
    for daemon in opened:
        await daemon.close()
