"""The registry's Lua scripts against a real Redis: atomic claims, capacity, fencing, release."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from shard.registry import Full, Gone, OwnedElsewhere, Registry

from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.keys import Keys

KEYS = Keys("t:")


def registry(client: aioredis.Redis, shard: str, capacity: int = 3) -> Registry:
    return Registry(client, KEYS, shard, capacity)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def beat(shard: str, addr: str = "127.0.0.1:1", sessions: int = 0, capacity: int = 3) -> Beat:
    return Beat(shard, addr, ReportedState.ACCEPTING, sessions, capacity, 0, 0, time.time())


async def alive(reg: Registry) -> None:
    await reg.beat(beat(reg.shard_id, capacity=reg.capacity), ttl=30)


async def test_claim_sets_owner_and_token(raw: aioredis.Redis) -> None:
    a = registry(raw, "shard-1")
    token = await a.claim("s1")
    assert token == 1
    record = await a.record("s1")
    assert record["owner"] == "shard-1" and record["status"] == "STARTING"
    assert await a.owned() == {"s1"}
    assert await a.claim("s1") == 1, "claiming again while owning is idempotent"
    assert await a.claim("s1", reclaim=True) == 2, "a restart bumps the token"


async def test_live_owner_keeps_its_session(raw: aioredis.Redis) -> None:
    a, b = registry(raw, "shard-1"), registry(raw, "shard-2")
    await alive(a)
    await a.claim("s1")
    with pytest.raises(OwnedElsewhere) as info:
        await b.claim("s1")
    assert info.value.owner == "shard-1"


async def test_dead_owner_loses_session_and_is_fenced(raw: aioredis.Redis) -> None:
    a, b = registry(raw, "shard-1"), registry(raw, "shard-2")
    token_a = await a.claim("s1")  # no heartbeat: shard-1's lease is gone
    token_b = await b.claim("s1")
    assert token_b == token_a + 1
    assert await a.owned() == set() and await b.owned() == {"s1"}
    assert not await a.update("s1", token_a, {"status": "WORKING"})
    assert not await a.save_snapshot("s1", token_a, b"old")
    assert not await a.release("s1", token_a, keep_running=True)
    assert await b.update("s1", token_b, {"status": "WORKING"})
    assert (await b.record("s1"))["status"] == "WORKING"


async def test_capacity_is_never_exceeded(raw: aioredis.Redis) -> None:
    a = registry(raw, "shard-1", capacity=2)
    await a.claim("s1")
    await a.claim("s2")
    with pytest.raises(Full):
        await a.claim("s3")
    assert await a.owned() == {"s1", "s2"}
    assert await a.claim("s1", reclaim=True) == 2, "re-claiming an owned session needs no room"


async def test_racing_shards_one_winner_per_session(raw: aioredis.Redis) -> None:
    shards = [registry(raw, f"shard-{n}", capacity=3) for n in range(1, 6)]
    for reg in shards:
        await alive(reg)
    sessions = [f"s{n}" for n in range(12)]

    async def attempt(reg: Registry, sid: str) -> tuple[str, str] | None:
        try:
            await reg.claim(sid)
            return sid, reg.shard_id
        except (Full, OwnedElsewhere):
            return None

    results = await asyncio.gather(*(attempt(r, s) for s in sessions for r in shards))
    wins = [r for r in results if r is not None]
    assert sorted(sid for sid, _ in wins) == sorted(sessions), "every session won exactly once"
    for reg in shards:
        owned = await reg.owned()
        assert len(owned) <= 3
        for sid in owned:
            assert (await reg.record(sid))["owner"] == reg.shard_id


async def test_release_makes_orphan_and_claim_adopts(raw: aioredis.Redis) -> None:
    a, b = registry(raw, "shard-1"), registry(raw, "shard-2")
    await alive(a)
    token = await a.claim("s1")
    assert await a.save_snapshot("s1", token, b"state")
    assert await a.release("s1", token, keep_running=True)
    assert await raw.smembers(KEYS.orphans) == {"s1"}
    assert (await a.record("s1"))["owner"] == ""
    await b.claim("s1")
    assert await raw.smembers(KEYS.orphans) == set()
    assert await b.snapshot("s1") == b"state"


async def test_an_adoption_never_brings_back_a_deleted_or_stopped_session(
    raw: aioredis.Redis,
) -> None:
    """A drain's hand-off or the autoscaler asks a shard to adopt a released session; deleted
    or stopped in between, it must stay so (not be created anew by the adopting PUT)."""
    a, b = registry(raw, "shard-1"), registry(raw, "shard-2")
    await alive(a)
    token = await a.claim("s1")
    assert await a.release("s1", token, keep_running=True)
    assert await b.claim("s1", adopt=True) == token + 1, "released and still wanted: adopted"
    with pytest.raises(Gone):
        await b.claim("never-was", adopt=True)
    assert await b.record("never-was") == {}, "nothing created"
    token = await a.claim("s2")
    assert await a.release("s2", token, keep_running=True)
    await b.mark_stopped("s2")
    with pytest.raises(Gone):
        await b.claim("s2", adopt=True)
    assert (await b.record("s2"))["desired"] == "stopped"


async def test_forget_removes_everything(raw: aioredis.Redis) -> None:
    a = registry(raw, "shard-1")
    token = await a.claim("s1")
    await a.save_snapshot("s1", token, b"x")
    assert await a.forget("s1", token)
    assert await a.record("s1") == {}
    assert await a.snapshot("s1") is None
    assert await a.owned() == set()


async def test_heartbeat_expires_with_its_lease(raw: aioredis.Redis) -> None:
    a = registry(raw, "shard-1")
    await a.beat(beat("shard-1", "127.0.0.1:9", sessions=1), ttl=0.3)
    beats = await a.heartbeats()
    assert [(b.id, b.addr, b.has_room) for b in beats] == [("shard-1", "127.0.0.1:9", True)]
    await asyncio.sleep(0.5)
    assert await a.heartbeats() == []


async def test_pending_demand_is_cleared_by_a_claim(raw: aioredis.Redis) -> None:
    a = registry(raw, "shard-1")
    await a.mark_pending("s9")
    assert await raw.zcard(KEYS.pending) == 1
    await a.claim("s9")
    assert await raw.zcard(KEYS.pending) == 0


async def test_stopping_a_session_of_a_dead_shard_frees_its_slot(raw: aioredis.Redis) -> None:
    a, b = registry(raw, "shard-1"), registry(raw, "shard-2")
    await a.claim("s1")  # shard-1 has no heartbeat: it is dead
    await b.mark_stopped("s1")
    record = await b.record("s1")
    assert (record["owner"], record["status"], record["desired"]) == ("", "STOPPED", "stopped")
    assert await a.owned() == set(), "a dead shard's set must not keep a stopped session"


async def test_stopping_a_session_a_live_shard_owns_is_refused(raw: aioredis.Redis) -> None:
    a, b = registry(raw, "shard-1"), registry(raw, "shard-2")
    await alive(a)
    await a.claim("s1")
    with pytest.raises(OwnedElsewhere):
        await b.mark_stopped("s1")
    assert (await a.record("s1"))["owner"] == "shard-1"


async def test_snapshots_are_text_and_older_binary_ones_still_load(
    raw: aioredis.Redis, redis_url: str
) -> None:
    """Both sides read Redis decoded to str, so snapshot bytes are stored as base64 text; one
    written by an earlier version (raw zlib bytes, no encoding field) still loads."""
    a = registry(raw, "shard-1")
    token = await a.claim("s1")
    blob = bytes(range(256))  # not valid UTF-8
    assert await a.save_snapshot("s1", token, blob)
    assert (await raw.hget(KEYS.snapshot("s1"), "encoding")) == "zlib+base64"
    assert await a.snapshot("s1") == blob
    binary = aioredis.Redis.from_url(redis_url)
    await binary.hset(KEYS.snapshot("s2"), mapping={"token": 1, "data": blob})
    await binary.aclose()
    assert await a.snapshot("s2") == blob


async def test_scripts_name_keys_only_through_the_key_builder(raw: aioredis.Redis) -> None:
    """Another prefix, and a session owned by a dead shard moves: every key the scripts touch
    (including the old owner's set, built inside Redis) carries that prefix and nothing else."""
    keys = Keys("other:")
    dead = Registry(raw, keys, "shard-1", 3)
    live = Registry(raw, keys, "shard-2", 3)
    await dead.claim("s1")
    token = await live.claim("s1")
    await live.release("s1", token, keep_running=True)
    await live.claim("s1")
    assert await raw.smembers(keys.shard_sessions("shard-1")) == set()
    assert await raw.smembers(keys.shard_sessions("shard-2")) == {"s1"}
    assert all(k.startswith("other:") for k in await raw.keys("*"))
