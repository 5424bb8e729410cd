"""The autoscaler hands nginx configs to the fronts through Redis; each front's agent applies them
to a real nginx; the ring reaches the shards only once every live front serves the config.

Each test runs one real agent with its own nginx (on one machine two fronts would share the
rendered port and pid file); other fronts appear as their reports, written through the same
`FrontReport` class their agents use. Real fronts on several nodes are tested in tests/swarm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.clock import FakeClock
from support.frontkit import TEMPLATES, Upstreams, nginx_folder, nginx_settings, shard_for
from support.procs import wait_for

from autoscaler.engine.fleet import Fleet, ShardInstance
from autoscaler.front import agent as agent_module
from autoscaler.front.agent import AgentIdentity, FrontAgent
from autoscaler.front.front import RETRY_AFTER_FAILURE, Front
from autoscaler.front.fronts import FrontReport
from autoscaler.front.reload import LocalReloader, running_pid
from autoscaler.metrics import Metrics
from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.config import NginxSettings, ReloadSettings
from chatscale_contract.keys import Keys

KEYS = Keys("cs:")


class SwitchableReloader(LocalReloader):
    """A real reload that can be lost, as a signal that never reaches nginx would be."""

    lost = False

    async def reload(self) -> None:
        if not self.lost:
            await super().reload()


@dataclass
class Kit:
    clock: FakeClock
    settings: NginxSettings
    reloader: SwitchableReloader
    agent: FrontAgent
    front: Front
    upstreams: Upstreams
    redis: aioredis.Redis

    def fleet(self, *shards: str) -> Fleet:
        now = self.clock.time()
        beats, instances = {}, {}
        for shard in shards:
            addr = self.upstreams.addrs[shard]
            beats[shard] = Beat(shard, addr, ReportedState.ACCEPTING, 0, 50, 0, 0, now)
            instances[shard] = ShardInstance(shard, True, now - 100, addr)
        return Fleet(now, instances, beats)

    async def ring(self) -> list[str] | None:
        raw = await self.redis.get(KEYS.ring)
        return None if raw is None else [m["id"] for m in json.loads(raw)["shards"]]

    async def other_front(self, front_id: str, generation: str) -> None:
        """Another front, on another node, reports that it serves `generation`."""
        report = FrontReport(front_id, "node-2", generation, "", self.clock.time())
        await self.redis.hset(KEYS.front(front_id), mapping=report.fields())
        await self.redis.zadd(KEYS.fronts, {front_id: report.ts})

    async def served_by_nginx(self) -> str:
        connector = aiohttp.TCPConnector(force_close=True)
        url = f"http://127.0.0.1:{self.settings.listen}/__chatscale/config"
        async with aiohttp.ClientSession(connector=connector) as http, http.get(url) as resp:
            return str((await resp.json())["version"])


@pytest.fixture
async def kit(upstreams: Upstreams, aredis: aioredis.Redis) -> AsyncIterator[Kit]:
    with nginx_folder() as folder:
        clock = FakeClock()
        settings = nginx_settings(folder, reload=ReloadSettings(min_interval=0, max_delay=0))
        settings = settings.model_copy(update={"confirm_timeout": 2.0})
        reloader = SwitchableReloader(settings)
        agent = FrontAgent(
            settings, AgentIdentity("front-a", "node-1"), reloader, aredis, KEYS, clock
        )
        front = Front(settings, 20.0, aredis, KEYS, Metrics(), clock)
        try:
            yield Kit(clock, settings, reloader, agent, front, upstreams, aredis)
        finally:
            await agent.stop_nginx()


async def test_the_ring_follows_once_every_live_front_serves_the_config(kit: Kit) -> None:
    await kit.other_front("front-b", "old")
    await kit.front.update(kit.fleet("shard-1", "shard-2"), dry_run=False)
    published = kit.front.state.published
    assert published is not None and await kit.ring() is None
    await kit.agent.step()  # front-a applies it: nginx starts on it
    assert kit.agent.generation == kit.front.state.generation
    assert await kit.served_by_nginx() == published.version
    await kit.front.update(kit.fleet("shard-1", "shard-2"), dry_run=False)
    assert await kit.ring() is None, "front-b does not serve it yet"
    await kit.other_front("front-b", kit.front.state.generation)
    await kit.front.update(kit.fleet("shard-1", "shard-2"), dry_run=False)
    assert await kit.ring() == ["shard-1", "shard-2"]
    assert kit.front.error == "" and kit.front.applied is not None
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{kit.settings.listen}/api/sessions/alice"
        owner = kit.front.applied.ring().owner("alice")
        assert await shard_for(http, url) == owner


async def test_a_front_that_never_confirms_never_gets_the_ring_published(kit: Kit) -> None:
    """Real nginx, real agent: the reload of a new table never reaches nginx, so it keeps
    serving the old one and the agent's confirmation fails, again and again. The new ring must
    not reach the shards; once nginx does get the reload, the agent's retry confirms it and only
    then is the ring published."""
    await kit.agent.step()  # front-a is live (serving nothing yet)
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert await kit.ring() is None
    await kit.agent.step()
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert await kit.ring() == ["shard-1"]
    first = await kit.served_by_nginx()

    kit.reloader.lost = True
    await kit.front.update(kit.fleet("shard-1", "shard-2"), dry_run=False)
    for _ in range(3):
        await kit.agent.step()  # applies, or retries: the reload is lost, nginx never confirms
        assert "did not serve version" in kit.agent.error, kit.agent.error
        await kit.front.update(kit.fleet("shard-1", "shard-2"), dry_run=False)
        assert "front front-a could not apply the config" in kit.front.error, kit.front.error
        assert await kit.ring() == ["shard-1"], "ring published before nginx served it"
        kit.clock.advance(agent_module.RETRY_AFTER_FAILURE)
    assert await kit.served_by_nginx() == first, "nginx still serves the old table"

    kit.reloader.lost = False
    await kit.agent.step()
    await kit.front.update(kit.fleet("shard-1", "shard-2"), dry_run=False)
    assert kit.front.error == ""
    assert await kit.ring() == ["shard-1", "shard-2"]
    assert kit.front.applied is not None
    assert await kit.served_by_nginx() == kit.front.applied.version


async def test_a_lagging_front_is_reported_and_a_silent_one_not_waited_for(kit: Kit) -> None:
    await kit.other_front("front-b", "old")
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    await kit.agent.step()
    kit.clock.advance(kit.settings.confirm_timeout + 1)
    await kit.agent.step()  # front-a keeps reporting; front-b fell silent
    await kit.other_front("front-b", "old")
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert kit.front.error.startswith("front front-b lags: serves old"), kit.front.error
    assert await kit.ring() is None
    kit.clock.advance(kit.settings.front_timeout + 1)  # front-b's last report is now too old
    await kit.agent.step()
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert kit.front.error == "" and await kit.ring() == ["shard-1"]


async def test_the_agent_brings_back_an_nginx_that_was_killed(kit: Kit) -> None:
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    await kit.agent.step()
    pid = running_pid(Path(kit.settings.pid_path))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: running_pid(Path(kit.settings.pid_path)) is None, 5, "the master to die")
    await kit.agent.step()
    assert kit.agent.restarts == 1
    back = running_pid(Path(kit.settings.pid_path))
    assert back is not None and back != pid
    assert await kit.served_by_nginx() == kit.agent.version


async def test_a_render_failure_is_reported_and_retried(kit: Kit, tmp_path: Path) -> None:
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "nginx.conf.j2").write_text("{% if %}")
    kit.front.template_dir = broken
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert kit.front.error.startswith("render failed: template"), kit.front.error
    assert await kit.redis.exists(KEYS.front_config) == 0, "nothing handed to the fronts"
    kit.front.template_dir = TEMPLATES
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert await kit.redis.exists(KEYS.front_config) == 0, "not before the retry time"
    kit.clock.advance(RETRY_AFTER_FAILURE)
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert await kit.redis.exists(KEYS.front_config) == 1 and kit.front.error == ""


async def test_a_moved_shard_is_a_new_generation_every_front_reloads(kit: Kit) -> None:
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    await kit.agent.step()
    first = kit.agent.generation
    fleet = kit.fleet("shard-1")
    moved = replace(fleet.instances["shard-1"], endpoint="10.9.9.9:8000")
    await kit.front.update(replace(fleet, instances={"shard-1": moved}), dry_run=False)
    await kit.agent.step()
    published = kit.front.state.published
    assert published is not None
    assert kit.agent.generation == kit.front.state.generation != first
    assert kit.agent.version == published.version


async def test_new_text_for_the_same_table_is_a_new_generation(kit: Kit) -> None:
    """Other nginx settings (a reload of config.yaml) render other text for the same table:
    every front must load it, not take it for what it already serves."""
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    await kit.agent.step()
    first, version = kit.agent.generation, kit.agent.version
    other = kit.settings.model_copy(update={"read_timeout": 99.0})
    fresh = Front(other, 20.0, kit.redis, KEYS, Metrics(), kit.clock)  # as after a reload
    await fresh.update(kit.fleet("shard-1"), dry_run=False)
    await kit.agent.step()
    assert kit.agent.generation == fresh.state.generation != first
    assert kit.agent.version == version, "the same table"
    served = await asyncio.to_thread(Path(kit.settings.config_path).read_text)
    assert "proxy_read_timeout 99000ms" in served


async def test_a_damaged_front_report_is_skipped_and_the_others_still_count(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage under another front's key (its report unreadable) must not hide front-a's
    report: front-a's confirmation still publishes the ring, and the damage is reported."""
    await kit.redis.zadd(KEYS.fronts, {"front-z": kit.clock.time()})
    await kit.redis.hset(KEYS.front("front-z"), mapping={"generation": "x", "ts": "soon"})
    await kit.agent.step()
    await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    await kit.agent.step()
    with caplog.at_level(logging.WARNING):
        await kit.front.update(kit.fleet("shard-1"), dry_run=False)
    assert await kit.ring() == ["shard-1"], kit.front.error
    assert "front report of front-z unreadable" in caplog.text
