"""A rolling update without Docker: the whole system (autoscaler, front agent and nginx, local
shards with real Chromium) with `policy.recycle.outdated` on, under the chaos suite's load
through the front. The shard settings change in config.yaml; every shard is replaced, one at a
time (an extra shard started first, recycle.max_surge; once it is ready a shard is drained: its
sessions move to shards with room), with no new scan, and the chaos suite's audit holds
(nothing lost, none open twice, every accepted send delivered once)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from support.chaos import Chaos, Load, beating_shards, load_client
from support.localsystem import LocalSystem, local_system
from support.procs import wait_for
from support.scenario import API_KEY
from support.shards import Api, log_in, site_state

from autoscaler.runtimes.local import shard_roots
from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]
PROJECT = "rollout"
CAPACITY = 4
"""Sessions per shard: room for the load's 4 sessions and its scratch one on the shards taking a
drained shard's sessions. (The one create 503 CI saw with 3 was a create passed to a shard that
had filled up since its heartbeat, since fixed in the shard: docs/shard.md, "Full, draining".)"""
SESSIONS = ["roll-a", "roll-b", "roll-c", "roll-d"]
KEYS = Keys("cs:")


def settings() -> dict[str, dict[str, Any]]:
    return {
        "shard": {"max_sessions": CAPACITY},
        "heartbeat": {"interval": 1, "timeout": 6},
        "policy": {
            "min_shards": 2,
            "max_shards": 4,
            "buffer": {"slots": 0, "percent": 0},
            "scale_down": {"stabilization": 600, "max_step": 1},
            "recycle": {"outdated": True},
        },
    }


async def test_a_settings_change_replaces_every_shard_one_at_a_time_under_load(
    tmp_path: Path, redis_url: str, site_url: str
) -> None:
    with local_system(tmp_path, redis_url, site_url, PROJECT, **settings()) as system:
        async with load_client() as http:
            api = Api(http, system.front, API_KEY)
            for n, sid in enumerate(SESSIONS):
                await log_in(api, http, site_url, sid, f"4915100002{n:02}")
            scans = len((await site_state(http, site_url))["sessions"])
            before = {proc.pid for proc in shard_roots(PROJECT).values()}

            async def settings_changed() -> None:
                _change_shard_settings(system)
                await asyncio.to_thread(_until_rolled_out, system)

            redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
            try:
                chaos = _chaos(http, system, redis, site_url)
                async with chaos.watching():
                    outcome = await chaos.fault("shard settings changed", settings_changed, 400)
            finally:
                await redis.aclose()
            assert len((await site_state(http, site_url))["sessions"]) == scans, "a new scan"
            after = {proc.pid for proc in shard_roots(PROJECT).values()}
            most_draining = system.most_draining_at_once()
    print(f"rollout: {outcome}; most shards draining at once: {most_draining}")
    assert outcome.problems == [], outcome.problems
    # Requests are held while their session moves (also while it waits its turn to reopen),
    # a stopped shard's requests reach its nginx backups, and a drained shard stops only once
    # the fronts no longer route to it (39 of 109 calls failed before all that).
    assert outcome.failed == {}, outcome.notes
    assert chaos.watch.violations == [], chaos.watch.violations
    assert most_draining == 1, "max_at_once is 1"
    assert not before & after, "every shard process was replaced"


def _chaos(
    http: aiohttp.ClientSession, system: LocalSystem, redis: aioredis.Redis, site: str
) -> Chaos:
    async def shards() -> dict[str, str]:
        return await beating_shards(redis, lambda addr: f"http://{addr}")

    async def orphans() -> list[str]:
        known = set(await redis.zrange(KEYS.shards, 0, -1))
        return [f"process of {shard}" for shard in shard_roots(PROJECT) if shard not in known]

    load = Load(http, system.front, SESSIONS)
    return Chaos(http, system.front, redis, site, shards, orphans, CAPACITY, load)


def _change_shard_settings(system: LocalSystem) -> None:
    """What an operator does: edit config.yaml (the daemon reads it again at its next pass)."""
    config = yaml.safe_load(system.path.read_text())
    config["shard"]["env"]["ROLLOUT_MARK"] = "2"
    system.path.write_text(yaml.safe_dump(config))


def _until_rolled_out(system: LocalSystem) -> None:
    """Until the autoscaler has read the new settings (a shard shows as outdated), then until
    no shard is outdated or draining."""

    def seen() -> bool:
        return any(s["outdated"] for s in system.status()["shards"])

    def done() -> bool:
        shards = system.status()["shards"]
        fresh = [s for s in shards if s["state"] == "ready" and not s["outdated"]]
        return len(fresh) == len(shards) >= 2

    wait_for(seen, 30, "the autoscaler to read the new shard settings", interval=0.2)
    wait_for(done, 360, "every shard replaced", interval=0.5)
