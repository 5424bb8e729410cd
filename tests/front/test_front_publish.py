"""The front keeps nginx in step: a failed apply or confirmation is retried, and the ring is
published only once nginx serves it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import redis.asyncio as aioredis
from support.clock import FakeClock
from support.frontkit import Front as FrontKit
from support.frontkit import Upstreams

from autoscaler.engine.fleet import Fleet, ShardInstance
from autoscaler.front.apply import ApplyResult, NginxApplier
from autoscaler.front.front import RETRY_AFTER_FAILURE, Front
from autoscaler.front.reload import LocalReloader
from autoscaler.front.table import RouteTable
from autoscaler.metrics import Metrics
from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.config import NginxSettings, ReloadSettings
from chatscale_contract.keys import Keys

KEYS = Keys("cs:")


@dataclass
class FlakyApplier:
    """Stands in for NginxApplier (the project's own interface): fails the first N applies."""

    failures: int
    calls: list[str] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)

    async def apply(
        self, text: str, version: str | None = None, force: bool = False
    ) -> ApplyResult:
        self.calls.append(version or "")
        self.forced.append(force)
        if len(self.calls) <= self.failures:
            return ApplyResult(changed=False, reloaded=False, error="nginx -t: boom")
        return ApplyResult(changed=True, reloaded=True)


def fleet(now: float) -> Fleet:
    beat = Beat("shard-1", "127.0.0.1:8101", ReportedState.ACCEPTING, 0, 50, 0, 0, now)
    instance = ShardInstance("shard-1", True, now - 100, "127.0.0.1:8101")
    return Fleet(now, {"shard-1": instance}, {"shard-1": beat})


async def test_failed_apply_is_retried_and_ring_published_after_success(
    aredis: aioredis.Redis,
) -> None:
    clock = FakeClock()
    nginx = NginxSettings(reload=ReloadSettings(min_interval=0, max_delay=0))
    applier = FlakyApplier(failures=2)
    front = Front(nginx, 20.0, applier, aredis, KEYS, Metrics(), clock)

    for _ in range(2):
        await front.update(fleet(clock.time()), dry_run=False)
        assert front.error == "nginx -t: boom" and front.applied is None
        assert await aredis.get(KEYS.ring) is None, "no ring published before nginx serves it"
        clock.advance(RETRY_AFTER_FAILURE)
    await front.update(fleet(clock.time()), dry_run=False)
    assert front.error == "" and front.applied is not None
    ring = json.loads(await aredis.get(KEYS.ring))
    assert ring["shards"] == [{"id": "shard-1", "addr": "127.0.0.1:8101"}]
    await front.update(fleet(clock.time()), dry_run=False)
    assert len(applier.calls) == 3, "an unchanged table is not applied again"
    assert applier.forced == [False, True, True], "a retry reloads even an unchanged text"


class SwitchableReloader:
    """A real reload (SIGHUP to the test's nginx) that can be turned into one nginx never gets,
    as when the signal is lost or the front is another process that did not pick it up."""

    def __init__(self, inner: LocalReloader) -> None:
        self.inner = inner
        self.lost = False

    async def reload(self) -> None:
        if not self.lost:
            await self.inner.reload()


async def test_a_front_that_never_confirms_never_gets_the_ring_published(
    front: FrontKit, upstreams: Upstreams, aredis: aioredis.Redis
) -> None:
    """Real nginx, real applier: the reload of a new table never reaches nginx, so it keeps
    serving the old version and the confirmation fails, again and again. The new ring must not
    reach the shards; once nginx does serve it, the next retry confirms and only then publishes."""
    clock = FakeClock()
    reloader = SwitchableReloader(LocalReloader(front.settings))
    reloader.lost = True
    applier = NginxApplier(front.settings, reloader, confirm_url=front.url, confirm_timeout=0.3)
    nginx = front.settings.model_copy(update={"reload": ReloadSettings(min_interval=0)})
    ours = Front(nginx, 20.0, applier, aredis, KEYS, Metrics(), clock)
    beat = Beat("shard-1", upstreams.addrs["shard-1"], ReportedState.ACCEPTING, 0, 50, 0, 0, 0.0)
    instance = ShardInstance("shard-1", True, 0.0, beat.addr)

    def observed() -> Fleet:
        now = clock.time()
        return Fleet(now, {"shard-1": instance}, {"shard-1": replace(beat, ts=now)})

    for _ in range(4):
        await ours.update(observed(), dry_run=False)
        assert "did not serve version" in ours.error, ours.error
        assert await aredis.get(KEYS.ring) is None, "ring published before nginx served it"
        clock.advance(RETRY_AFTER_FAILURE)
    assert await front.version() == RouteTable(()).version, "nginx still serves the old table"

    reloader.lost = False
    await ours.update(observed(), dry_run=False)
    assert ours.error == "" and ours.table is not None
    assert await front.version() == ours.table.version
    ring = json.loads(await aredis.get(KEYS.ring))
    assert ring["shards"] == [{"id": "shard-1", "addr": upstreams.addrs["shard-1"]}]
