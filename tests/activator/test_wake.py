"""Waking from zero shards and holding requests through a cold start, end to end without Docker:
real nginx (with its agent), the real autoscaler with the local runtime, real shards running
real Chromium, real Redis. Clients never retry: every request below is sent once.
(The same from zero with Docker: tests/e2e/test_compose_wake.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.localsystem import LocalSystem, local_system
from support.procs import wait_for
from support.scenario import API_KEY

from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEYS = Keys("cs:")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150)) as session:
        yield session


@pytest.fixture
def system(tmp_path: Path, redis_url: str, site_url: str) -> Iterator[LocalSystem]:
    with local_system(tmp_path, redis_url, site_url, "wake") as made:
        made.wait_front_holds()
        yield made


async def call(
    http: aiohttp.ClientSession, front: str, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any], Any]:
    headers = {"X-Api-Key": API_KEY}
    async with http.request(method, front + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def until_status(
    http: aiohttp.ClientSession, front: str, sid: str, status: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, view, _ = await call(http, front, "GET", f"/api/sessions/{sid}")
        if code == 200 and view.get("status") == status:
            return
        assert time.monotonic() < deadline, f"{sid} not {status}: {code} {view}"
        await asyncio.sleep(0.3)


def shard_count(system: LocalSystem) -> int:
    return len(system.status()["shards"])


async def test_from_zero_a_create_is_held_until_a_shard_runs(
    system: LocalSystem, http: aiohttp.ClientSession, redis_url: str
) -> None:
    assert shard_count(system) == 0
    began = time.monotonic()
    code, view, headers = await call(http, system.front, "PUT", "/api/sessions/alice", {})
    took = time.monotonic() - began
    assert code == 201, view
    assert view["shard"] == "shard-1" and "X-Chatscale-Held" in headers
    print(f"\nfrom zero: PUT -> 201 in {took:.2f} s")
    await until_status(http, system.front, "alice", "SCAN_QR_CODE", 60)
    print(f"from zero: PUT -> SCAN_QR_CODE in {time.monotonic() - began:.2f} s")
    stats = system.status()["activator"]["here"]
    assert stats["wakeups"] == 1

    # Once nginx routes to shard-1, its requests no longer touch the activator.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:

        async def in_ring() -> bool:
            ring = await client.get(KEYS.ring)
            return bool(ring and json.loads(ring)["shards"])

        deadline = time.monotonic() + 30
        while not await in_ring():
            assert time.monotonic() < deadline, "shard-1 never joined the ring"
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    passed = system.status()["activator"]["here"]["passed"]
    marker = f"direct-{time.monotonic_ns()}"
    for _ in range(5):
        code, _, headers = await call(http, system.front, "GET", f"/api/sessions/alice?m={marker}")
        assert code == 200 and "X-Chatscale-Held" not in headers
    assert system.status()["activator"]["here"]["passed"] == passed
    await asyncio.sleep(1.2)  # the access log is flushed every second
    direct = [e for e in system.access_log() if marker in e["uri"]]
    assert len(direct) == 5
    assert {e["route"] for e in direct} <= {"chatscale_ring", "shard_1"}, direct
    shard_addr = system.status()["shards"][0]["addr"]
    assert {e["upstream_addr"] for e in direct} == {shard_addr}
    held = [e for e in system.access_log() if e["uri"] == "/api/sessions/alice"]
    assert held[0]["route"] == "chatscale_activator"


async def test_a_hold_that_times_out_says_503_and_the_fleet_grows_anyway(
    tmp_path: Path, redis_url: str, site_url: str, http: aiohttp.ClientSession
) -> None:
    # A shard takes about 2 s to boot here: a 0.2 s hold always runs out first.
    with local_system(
        tmp_path, redis_url, site_url, "wakeshort", activator={"hold_timeout": 0.2}
    ) as system:
        system.wait_front_holds()
        code, body, headers = await call(http, system.front, "PUT", "/api/sessions/bob", {})
        assert code == 503 and headers["Retry-After"] == "5", body
        assert "within 0.2 s" in body["error"]
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        assert await client.zscore(KEYS.pending, "bob") is not None
        await client.aclose()
        wait_for(lambda: shard_count(system) == 1, 60, "the shard the demand asked for")
        assert system.status()["activator"]["here"]["timeout"] == 1
        await asyncio.sleep(3)  # its boot
        code, body, _ = await call(http, system.front, "PUT", "/api/sessions/bob", {})
        assert code == 201, body


async def test_with_no_activator_nginx_says_503_and_waking_resumes_when_it_is_back(
    system: LocalSystem, http: aiohttp.ClientSession
) -> None:
    system.kill_autoscaler()  # the only activator (and the leader) is gone
    code, body, headers = await call(http, system.front, "PUT", "/api/sessions/carol", {})
    assert code == 503 and headers["Retry-After"] == "5", body
    assert body == {"error": "no shard is available", "status": 503}
    assert shard_count_or_none(system) is None

    system.start_autoscaler()
    code, body, _ = await call(http, system.front, "PUT", "/api/sessions/carol", {})
    assert code == 201, body
    await until_status(http, system.front, "carol", "SCAN_QR_CODE", 60)


def shard_count_or_none(system: LocalSystem) -> int | None:
    with contextlib.suppress(OSError):
        return shard_count(system)
    return None


async def test_thirty_creates_against_a_full_shard_all_succeed(
    tmp_path: Path, redis_url: str, site_url: str, http: aiohttp.ClientSession
) -> None:
    policy = {"min_shards": 1, "max_shards": 5, "scale_up": {"max_step": 4}}
    with local_system(
        tmp_path, redis_url, site_url, "wakefull", policy=policy, shard={"max_sessions": 10}
    ) as system:
        wait_for(lambda: shard_count(system) == 1, 60, "the first shard")
        first = [f"first-{n}" for n in range(10)]
        for sid in first:
            code, body, _ = await call(http, system.front, "PUT", f"/api/sessions/{sid}", {})
            assert code == 201, body
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                for shard_id in await client.zrange(KEYS.shards, 0, -1):
                    most = max(most, await client.scard(KEYS.shard_sessions(shard_id)))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        burst = [f"burst-{n}" for n in range(30)]
        try:
            answers = await asyncio.gather(
                *(call(http, system.front, "PUT", f"/api/sessions/{sid}", {}) for sid in burst)
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        codes = [code for code, _, _ in answers]
        assert codes == [201] * 30, [(c, b) for c, b, _ in answers if c != 201]
        assert most <= 10, f"a shard held {most} sessions"
        owners = {await client.hget(KEYS.session(sid), "owner") for sid in burst + first}
        await client.aclose()
        assert len(owners) == 4 and None not in owners
