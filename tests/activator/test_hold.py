"""The activator on its own: real Redis, real HTTP, stand-in shards that claim sessions through
the shard's own registry scripts (control plane only: what is tested is holding and passing,
not sessions). The whole path through nginx, the autoscaler and real shards is in test_wake.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from support.heartbeat_shard import HeartbeatShard, Settings
from support.procs import eventually, free_port

from autoscaler.activator.server import running
from autoscaler.metrics import Metrics
from chatscale_contract.clock import SYSTEM
from chatscale_contract.config import Config
from chatscale_contract.hops import FORWARDED_BY, WAKE
from chatscale_contract.keys import Keys

KEYS = Keys("cs:")


@dataclass
class Kit:
    url: str
    redis_url: str
    redis: aioredis.Redis
    metrics: Metrics
    activator: Any
    http: aiohttp.ClientSession
    shards: list[HeartbeatShard] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        async with self.http.request(method, self.url + path, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    async def shard(
        self,
        n: int,
        capacity: int = 10,
        beat: bool = True,
        routes: Sequence[web.RouteDef] = (),
    ) -> HeartbeatShard:
        """A stand-in shard serving on a free port (with extra `routes`); beating every 0.2 s,
        or only once when it starts if `beat` is off."""
        settings = Settings(
            f"shard-{n}", free_port(), redis_url=self.redis_url, capacity=capacity, interval=0.2
        )
        shard = HeartbeatShard(settings)
        shard.routes.extend(routes)
        self.shards.append(shard)
        if beat:
            self.tasks.append(asyncio.create_task(shard.run()))
        else:
            await shard.start()
        return shard

    def outcomes(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "chatscale_activator_requests_total", {"outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
async def kit(redis_url: str) -> AsyncIterator[Kit]:
    async with _kit(redis_url, hold_timeout=20, max_held=50) as made:
        yield made


@contextlib.asynccontextmanager
async def _kit(redis_url: str, **settings: Any) -> AsyncIterator[Kit]:
    port = free_port()
    config = Config.model_validate(
        {"redis": {"url": redis_url}, "activator": {"bind": f"127.0.0.1:{port}", **settings}}
    )
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    metrics = Metrics()
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        running(config, client, metrics, SYSTEM) as activator,
    ):
        kit = Kit(f"http://127.0.0.1:{port}", redis_url, client, metrics, activator, http)
        try:
            yield kit
        finally:
            for task in kit.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for shard in kit.shards:
                with contextlib.suppress(Exception):
                    await shard.stop()
    await client.aclose()


async def test_a_request_waits_for_the_first_shard_then_reaches_it(kit: Kit) -> None:
    nudges = kit.redis.pubsub()
    await nudges.subscribe(KEYS.nudge)
    create = asyncio.create_task(kit.call("PUT", "/api/sessions/alice", json={}))

    async def recorded() -> bool:
        return await kit.redis.zscore(KEYS.pending, "alice") is not None

    await eventually(recorded, 5, "the demand to be recorded")
    assert await _nudged(nudges), "the autoscaler was not nudged"
    await asyncio.sleep(0.5)
    assert not create.done(), "answered before any shard existed"
    assert kit.activator.held == 1

    shard_up = time.monotonic()
    await kit.shard(1)
    status, body, headers = await create
    assert status == 201 and body["shard"] == "shard-1"
    assert time.monotonic() - shard_up < 2.0, "the new shard was noticed late"
    assert float(headers["X-Chatscale-Held"]) > 0.5
    assert await kit.redis.zscore(KEYS.pending, "alice") is None  # the claim took it
    stats = kit.activator.stats()
    assert stats["passed"] == 1 and stats["wakeups"] == 1 and stats["held"] == 0
    assert kit.outcomes("passed") == 1
    await nudges.aclose()


async def test_a_request_without_a_session_id_wakes_the_fleet_too(kit: Kit) -> None:
    create = asyncio.create_task(kit.call("GET", "/health"))

    async def recorded() -> bool:
        return await kit.redis.zscore(KEYS.pending, WAKE) is not None

    await eventually(recorded, 5, "the wake-up demand")
    await kit.shard(1)
    status, body, _ = await create
    assert status == 200 and body["shard"] == "shard-1"


async def test_the_hold_ends_with_503_and_retry_after_and_the_demand_stays(
    redis_url: str,
) -> None:
    async with _kit(redis_url, hold_timeout=1) as kit:
        began = time.monotonic()
        status, body, headers = await kit.call("PUT", "/api/sessions/bob", json={})
        assert 1.0 <= time.monotonic() - began < 3.0
        assert status == 503 and headers["Retry-After"] == "5"
        assert "within 1 s" in body["error"] and body["status"] == 503
        assert await kit.redis.zscore(KEYS.pending, "bob") is not None
        assert kit.activator.stats()["timeout"] == 1 and kit.outcomes("timeout") == 1


async def test_past_the_queue_limit_503_at_once(redis_url: str) -> None:
    async with _kit(redis_url, hold_timeout=20, max_held=2) as kit:
        held = [
            asyncio.create_task(kit.call("PUT", f"/api/sessions/s{i}", json={})) for i in (1, 2)
        ]
        await eventually(_holding(kit, 2), 5, "two held requests")
        status, body, headers = await kit.call("PUT", "/api/sessions/s3", json={})
        assert status == 503 and headers["Retry-After"] == "5"
        assert "activator.max_held" in body["error"]
        assert await kit.redis.zscore(KEYS.pending, "s3") is not None  # demand still counted
        await kit.shard(1)
        assert [(await task)[0] for task in held] == [201, 201]
        assert kit.outcomes("overflow") == 1


async def test_requests_for_one_session_keep_their_order(kit: Kit) -> None:
    seen: list[str] = []

    async def message(request: web.Request) -> web.Response:
        text = (await request.json())["text"]
        # Earlier messages take longer here: requests passed on together would finish in
        # reverse. Held in line, each is passed only once the one before it was answered.
        await asyncio.sleep(0.04 * (6 - int(text)))
        seen.append(text)
        return web.json_response({"ok": True})

    sends = []
    for i in range(6):
        body = {"text": str(i)}
        path = "/api/sessions/alice/messages"
        sends.append(asyncio.create_task(kit.call("POST", path, json=body)))
        await eventually(_holding(kit, i + 1), 5, f"request {i} held")
    await kit.shard(1, routes=[web.post("/api/sessions/{id}/messages", message)])
    assert [(await s)[0] for s in sends] == [200] * 6
    assert seen == [str(i) for i in range(6)]


async def test_a_shard_that_filled_up_meanwhile_sends_it_to_the_next(kit: Kit) -> None:
    # shard-1 still advertises room in its last heartbeat, but is full: the activator tries it
    # (the only member of the ring nginx serves), gets its 503, and passes the request to
    # shard-2 instead of waiting or failing.
    one = await kit.shard(1, capacity=1, beat=False)
    await one.registry.claim("taken")
    await kit.shard(2)
    ring = {"shards": [{"id": "shard-1", "addr": f"127.0.0.1:{one.s.port}"}]}
    await kit.redis.set(KEYS.ring, json.dumps(ring))
    status, body, _ = await kit.call("PUT", "/api/sessions/alice", json={})
    assert status == 201 and body["shard"] == "shard-2"
    assert await one.registry.owned() == {"taken"}


async def test_requests_are_passed_as_forwarded(kit: Kit) -> None:
    seen: dict[str, str] = {}

    async def echo(request: web.Request) -> web.Response:
        seen.update(request.headers)
        return web.json_response({"ok": True})

    await kit.shard(1, routes=[web.get("/api/sessions/{id}/qr", echo)])
    await eventually(_beating(kit, 1), 5, "shard-1's heartbeat")
    status, _, _ = await kit.call("GET", "/api/sessions/alice/qr", headers={"X-Api-Key": "k"})
    assert status == 200
    assert seen[FORWARDED_BY] == "activator" and seen["X-Api-Key"] == "k"


async def test_it_registers_while_it_runs(redis_url: str, aredis: aioredis.Redis) -> None:
    async with _kit(redis_url) as kit:
        (addr,) = await aredis.zrange(KEYS.activators, 0, -1)
        assert kit.url.endswith(addr)
    assert await aredis.zrange(KEYS.activators, 0, -1) == []


async def _nudged(channel: Any) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = await channel.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            return True
    return False


def _holding(kit: Kit, count: int) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(kit.activator.held >= count)

    return check


def _beating(kit: Kit, count: int) -> Callable[[], Any]:
    async def check() -> bool:
        return len(await kit.redis.zrange(KEYS.shards, 0, -1)) >= count

    return check
