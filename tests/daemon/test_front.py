"""The front keeps nginx in step: a failed apply is retried, the ring is published after it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from autoscaler import front as front_module
from autoscaler.config import Config
from autoscaler.front import Front
from autoscaler.keys import Keys
from autoscaler.metrics import Metrics
from autoscaler.model import Beat
from autoscaler.nginx_apply import ApplyResult
from autoscaler.observe import Fleet
from autoscaler.runtime import ShardInstance

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
    beat = Beat("shard-1", "127.0.0.1:8101", "accepting", 0, 50, 0, 0, now)
    instance = ShardInstance("shard-1", True, now - 100, "127.0.0.1:8101")
    return Fleet(now, {"shard-1": instance}, {"shard-1": beat})


async def test_failed_apply_is_retried_and_ring_published_after_success(
    aredis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front_module, "RETRY_AFTER_FAILURE", 0.0)
    config = Config.model_validate(
        {"redis": {"url": redis_url}, "nginx": {"reload": {"min_interval": 0, "max_delay": 0}}}
    )
    front = Front(config, aredis, Metrics())
    front.applier = FlakyApplier(failures=2)  # type: ignore[assignment]
    import time

    for _ in range(2):
        await front.update(fleet(time.time()), dry_run=False)
        assert front.error == "nginx -t: boom" and front.applied is None
        assert await aredis.get(KEYS.ring) is None, "no ring published before nginx serves it"
    await front.update(fleet(time.time()), dry_run=False)
    assert front.error == "" and front.applied is not None
    ring = json.loads(await aredis.get(KEYS.ring))
    assert ring["shards"] == [{"id": "shard-1", "addr": "127.0.0.1:8101"}]
    await front.update(fleet(time.time()), dry_run=False)
    assert len(front.applier.calls) == 3, "an unchanged table is not applied again"
