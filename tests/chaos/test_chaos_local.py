"""Chaos without Docker: the whole system (autoscaler, front agent and nginx, shards with real
Chromium) on Redis Sentinel with append-only files, under create and send load through the
front, while one fault after another hits it:

- the Redis primary SIGKILLed (the sentinels promote the replica);
- both Redis servers SIGKILLed, Redis gone for 3 s, then started again from their files;
- nginx's master SIGKILLed (the front agent starts nginx again);
- the autoscaler SIGKILLed three times while it scales out for new sessions.

After each (tests/support/chaos.py): no session lost, none open on two shards or off its
registry token, no shard over capacity, nothing deleted back, no orphan shard process, every
accepted send delivered once and no send twice. The reliability table in docs/benchmarks.md
comes from this test's record (test-artifacts/chaos-local.json).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.chaos import Chaos, Load, beating_shards, load_client, record
from support.localsystem import LocalSystem, local_system
from support.procs import wait_for
from support.scenario import API_KEY
from support.sentinel import SentinelSet, sentinel_set
from support.shards import Api, log_in

from autoscaler.redisconn import connect
from autoscaler.runtimes.local import shard_roots

PROJECT = "chaoslocal"
CAPACITY = 3
SESSIONS = ["chaos-a", "chaos-b", "chaos-c", "chaos-d"]
EXTRA = ["chaos-more-1", "chaos-more-2", "chaos-more-3"]
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "1"))
"""Every fault once in the test suite; `CHAOS_ROUNDS=5 scripts/test tests/chaos` is the longer
run (docs/benchmarks.md, reliability)."""
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300 + 300 * ROUNDS)]


def settings() -> dict[str, dict[str, object]]:
    return {
        "shard": {"max_sessions": CAPACITY},
        # The lease outlasts a Sentinel failover, as in production (docs/redis-schema.md).
        "heartbeat": {"interval": 1, "timeout": 15},
        "policy": {
            "min_shards": 2,
            "max_shards": 4,
            "buffer": {"slots": 1, "percent": 0},
            "scale_up": {"max_step": 2},
            "scale_down": {"stabilization": 20, "max_step": 1},
        },
    }


async def test_the_fleet_keeps_its_invariants_through_faults_under_load(
    tmp_path: Path, site_url: str, artifacts_dir: Path
) -> None:
    with (
        sentinel_set(tmp_path / "redis", aof=True) as sentinels,
        local_system(tmp_path, sentinels.url, site_url, PROJECT, **settings()) as system,
    ):
        redis = connect(sentinels.url, socket_timeout=5)
        async with load_client() as http:
            try:
                chaos = await _prepared(http, redis, system, site_url)
                await _run_faults(chaos, sentinels, system)
            finally:
                await redis.aclose()
        record(artifacts_dir, "local", chaos.outcomes)
        assert chaos.watch.violations == [], chaos.watch.violations
        assert chaos.watch.samples > 20, "the watch hardly ever saw the shards"
        for outcome in chaos.outcomes:
            assert outcome.problems == [], f"{outcome.fault}: {outcome.problems}"
        assert len(chaos.load.accepted) > 40, "the load hardly sent anything"


async def _prepared(
    http: aiohttp.ClientSession, redis: aioredis.Redis, system: LocalSystem, site: str
) -> Chaos:
    """Every session logged in through the front; the load and the audit's views of the fleet."""
    api = Api(http, system.front, API_KEY)
    for n, sid in enumerate(SESSIONS):
        await log_in(api, http, site, sid, f"4915100000{n:02}")

    async def shards() -> dict[str, str]:
        return await beating_shards(redis, lambda addr: f"http://{addr}")

    async def orphans() -> list[str]:
        known = set(await redis.zrange("cs:shards", 0, -1))
        return [f"process of {shard}" for shard in shard_roots(PROJECT) if shard not in known]

    load = Load(http, system.front, SESSIONS)
    return Chaos(http, system.front, redis, site, shards, orphans, CAPACITY, load)


async def _run_faults(chaos: Chaos, sentinels: SentinelSet, system: LocalSystem) -> None:
    async with chaos.watching():
        for round_ in range(ROUNDS):
            await _one_round(chaos, sentinels, system)
            if round_ < ROUNDS - 1:
                await _shrink(chaos, system)


async def _one_round(chaos: Chaos, sentinels: SentinelSet, system: LocalSystem) -> None:
    old = 0

    async def primary_killed() -> None:
        nonlocal old
        old = sentinels.kill_primary()

    await chaos.fault("Redis primary SIGKILLed (Sentinel promotes the replica)", primary_killed)
    # The old primary back, as the new one's replica (what an operator or a supervisor does).
    await asyncio.to_thread(
        wait_for, lambda: sentinels.primary() != old, 30, "the sentinels' new primary"
    )
    await asyncio.to_thread(sentinels.start_again, old)

    async def redis_restarted() -> None:
        await asyncio.to_thread(sentinels.restart_servers, 3.0)

    await chaos.fault("Redis SIGKILLed, gone 3 s, started again from its AOF", redis_restarted)

    async def nginx_killed() -> None:
        os.kill(system.nginx_pid(), signal.SIGKILL)

    await chaos.fault("nginx master SIGKILLed (the front agent starts it again)", nginx_killed)

    async def autoscaler_killed_while_scaling() -> None:
        # Three more sessions than the fleet has room for: it must scale out meanwhile.
        placing = [asyncio.create_task(chaos.load.place(sid)) for sid in EXTRA]
        for _ in range(3):
            await asyncio.sleep(2)
            system.kill_autoscaler()
            await asyncio.sleep(1)
            await asyncio.to_thread(system.start_autoscaler)
        await asyncio.wait_for(asyncio.gather(*placing), 180)

    await chaos.fault(
        "autoscaler SIGKILLed 3 times while it scales out", autoscaler_killed_while_scaling
    )


async def _shrink(chaos: Chaos, system: LocalSystem) -> None:
    """Between rounds: the extra sessions deleted and the fleet back to min_shards, so the next
    round's autoscaler is killed while it scales out again."""
    for sid in EXTRA:
        assert await chaos.load.call("DELETE", f"/api/sessions/{sid}", "delete") == 200
        chaos.load.created.discard(sid)

    def two_shards() -> bool:
        return len(system.status()["shards"]) == 2

    await asyncio.to_thread(wait_for, two_shards, 180, "the fleet back to 2 shards", 1)
