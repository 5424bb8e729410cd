"""Fixtures for shard tests: the stand-in site and real shard processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from support.shards import ShardFleet


@pytest.fixture
def fleet(redis_url: str, site_url: str, tmp_path: Path) -> Iterator[ShardFleet]:
    shards = ShardFleet(redis_url, site_url, tmp_path)
    yield shards
    shards.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        yield session
