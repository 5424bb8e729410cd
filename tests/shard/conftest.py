"""Fixtures for shard tests: the stand-in site and real shard processes."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from support.procs import free_port, port_open, require_binary, start, stop, wait_for
from support.shards import ShardFleet

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stand-in for WhatsApp Web (tests/fakesite), as its own process."""
    require_binary("chromium")
    port = free_port()
    log = tmp_path_factory.mktemp("fakesite") / "fakesite.log"
    argv = [sys.executable, "-m", "fakesite"]
    proc = start(
        [*argv, "--port", str(port), "--qr-rotate-seconds", "60"], log, {"PYTHONPATH": str(TESTS)}
    )
    wait_for(lambda: port_open(port), 15, f"fakesite (log: {log})")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def fleet(redis_url: str, site_url: str, tmp_path: Path) -> Iterator[ShardFleet]:
    shards = ShardFleet(redis_url, site_url, tmp_path)
    yield shards
    shards.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        yield session
