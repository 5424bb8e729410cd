"""Fixtures shared by every test layer: a real Redis server and the stand-in site, owned by the
test session."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from support.clock import FakeClock
from support.loop import CAPACITY, Loop
from support.memruntime import MemoryRuntime
from support.procs import free_port, port_open, require_binary, start, start_redis, stop, wait_for
from support.receiver import receiver  # noqa: F401 (a fixture, shared by every test folder)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port; yields its base URL."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A freshly flushed database on the session's Redis (the arq pattern: flush per test)."""
    client = redis.Redis.from_url(f"{redis_server}/0")
    client.flushall()
    client.close()
    return f"{redis_server}/0"


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stand-in for WhatsApp Web (tests/fakesite), as its own process."""
    require_binary("chromium")
    port = free_port()
    log = tmp_path_factory.mktemp("fakesite") / "fakesite.log"
    argv = [sys.executable, "-m", "fakesite"]
    proc = start(
        [*argv, "--port", str(port), "--qr-rotate-seconds", "60"],
        log,
        {"PYTHONPATH": str(Path(__file__).resolve().parent)},
    )
    wait_for(lambda: port_open(port), 15, f"fakesite (log: {log})")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save screenshots and logs for a human to look at (kept after the run)."""
    path = Path(__file__).resolve().parents[1] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
async def loop(redis_url: str, aredis: aioredis.Redis) -> AsyncIterator[Loop]:
    """The control loop on a fake clock: real Redis, in-memory stand-in shards (see loop.py)."""
    clock = FakeClock()
    runtime = MemoryRuntime(redis_url, clock, capacity=CAPACITY)
    kit = Loop(redis_url, aredis, clock, runtime)
    async with kit.stack:
        yield kit
    await runtime.close()
