"""Garbage in the Redis keys a shard reads (real shard, Redis, Chromium, the stand-in site): a
damaged heartbeat of another shard, an unreadable ring, a session record with damaged fields and
an unreadable snapshot. The shard answers as usual (no 500), opens the damaged session afresh,
places new ones, and says in its log what it skipped."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.shards import Api, ShardFleet

from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")


async def test_a_shard_reads_past_garbage(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.zadd(KEYS.shards, {"shard-9": 1.0})
    await client.hset(KEYS.shard("shard-9"), mapping={"sessions": "lots", "ts": "yesterday"})
    await client.set(KEYS.ring, "{not json")
    damaged = {"token": "x", "options": "nope", "metadata": "{bad", "status": "STOPPED"}
    await client.hset(KEYS.session("ghost"), mapping=damaged)
    await client.zadd(KEYS.sessions, {"ghost": 1.0})
    snapshot = {"token": "1", "encoding": "zlib+base64", "data": "!!not base64!!"}
    await client.hset(KEYS.snapshot("ghost"), mapping=snapshot)
    await client.aclose()

    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    code, listing, _ = await api.call("GET", "/api/sessions")
    assert code == 200 and [s["id"] for s in listing["sessions"]] == ["ghost"]
    code, ghost, _ = await api.call("GET", "/api/sessions/ghost")
    assert (code, ghost["token"]) == (200, 0)
    assert (await api.call("PUT", "/api/sessions/fresh1", {}))[0] == 201
    code, body, _ = await api.call("PUT", "/api/sessions/ghost", {})
    assert code == 201, body
    for sid in ("fresh1", "ghost"):
        await api.wait_status(sid, "SCAN_QR_CODE")
    log = shard.log.read_text()
    assert "a heartbeat is unreadable" in log and "the published ring is unreadable" in log
    assert "unreadable, starting fresh" in log, "the damaged snapshot"
