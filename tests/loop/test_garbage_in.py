"""Garbage in the Redis keys the fleet reads (real Redis, the loop's in-memory runtime): a
damaged heartbeat, ring or session record never stops the daemon's passes; it is reported in
the log and the rest of the fleet is seen as it is."""

from __future__ import annotations

import logging

import pytest
from support.loop import KEYS, Loop, make_config


async def test_a_damaged_heartbeat_is_skipped_and_reported(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2))
    await loop.converge(daemon, lambda: loop.beating(2), "2 beating shards")
    client = loop.client
    await client.zadd(KEYS.shards, {"shard-9": 1.0})
    await client.hset(KEYS.shard("shard-9"), mapping={"sessions": "lots", "ts": "yesterday"})
    await client.set(KEYS.ring, "{not json")
    await client.hset(KEYS.session("ghost"), mapping={"token": "x", "options": "nope"})
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            await loop.step(daemon)  # fails the test if a pass fails
    observed = daemon.state.observed
    assert observed is not None and observed.fresh, observed
    beating = sorted(s.id for s in observed.shards if s.heartbeat_age is not None)
    assert beating == ["shard-1", "shard-2"], "the damaged one is not taken for a shard"
    assert any("heartbeat of shard-9 unusable" in r.getMessage() for r in caplog.records)


async def test_a_damaged_activator_registration_or_shard_address_is_left_out_and_reported(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """An activator registration or a heartbeat address nginx could not take (it would make
    every config the front renders invalid) is left out of the fleet and reported."""
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2))
    await loop.converge(daemon, lambda: loop.beating(2), "2 beating shards")
    now = loop.clock.time()
    await loop.client.zadd(KEYS.activators, {"127.0.0.1:7001": now, "evil;host:80": now})
    await loop.client.hset(KEYS.shard("shard-2"), "addr", "no port; return 200")
    # (reconcile alone, not loop.step: the shard's next beat would rewrite its address)
    with caplog.at_level(logging.WARNING):
        decision = await daemon.reconcile()
    assert decision is not None, daemon.state.last_error
    fleet = daemon.state.fleet
    assert fleet is not None
    assert fleet.activators == ("127.0.0.1:7001",)
    assert sorted(fleet.beats) == ["shard-1"], "the damaged one is not taken for a shard"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "activator registration 'evil;host:80' unusable" in messages, messages
    assert "heartbeat of shard-2 unusable" in messages, messages
