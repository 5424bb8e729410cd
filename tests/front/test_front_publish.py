"""The front keeps nginx in step: a failed apply is retried, the ring is published after it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from support.clock import FakeClock

from autoscaler.engine.fleet import Fleet, ShardInstance
from autoscaler.front.apply import ApplyResult
from autoscaler.front.front import RETRY_AFTER_FAILURE, Front
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

    async def apply(
        self, text: str, version: str | None = None, force: bool = False
    ) -> ApplyResult:
        self.calls.append(version or "")
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
