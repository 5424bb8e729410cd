"""Observe: read the shard list from the runtime and heartbeats and the registry from Redis.

`Observer.observe()` does the I/O and returns a `Fleet` (autoscaler.engine.fleet), which the pure
code turns into the engine's input. One list call to the runtime and two pipelined round trips to
Redis per pass, whatever the fleet's size.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.engine.fleet import Fleet
from autoscaler.front.render import check_addr
from autoscaler.runtimes.base import Runtime, RuntimeFailure
from chatscale_contract.beat import Beat
from chatscale_contract.clock import Clock
from chatscale_contract.hops import ACTIVATOR_TTL
from chatscale_contract.ids import is_shard_id
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)

PENDING_WINDOW = 60.0
"""Refused creates and held requests younger than this count as demand (clients retry after
Retry-After; an activator renews the mark while it holds one)."""


class Observer:
    """Reads one consistent-enough picture of the fleet per reconcile pass."""

    def __init__(self, client: aioredis.Redis, runtime: Runtime, keys: Keys, clock: Clock):
        self.redis = client
        self.runtime = runtime
        self.keys = keys
        self.clock = clock
        self.fresh_since: float | None = None
        """Since when every observation could be read (None right after one could not)."""

    async def observe(self) -> Fleet:
        now = self.clock.time()
        try:
            instances = {i.shard_id: i for i in await self.runtime.list_shards()}
            cluster = await self.runtime.cluster()
        except RuntimeFailure as exc:
            self.fresh_since = None
            return Fleet(now, error=f"runtime unreadable: {exc}")
        try:
            beats, owners, owned = await self._registry()
            pending, orphans, activators = await self._demand(now)
        except (RedisError, OSError, ValueError, KeyError) as exc:
            self.fresh_since = None
            return Fleet(now, instances, error=f"redis unreadable: {exc}")
        if self.fresh_since is None:
            self.fresh_since = now
        since = self.fresh_since
        return Fleet(
            now,
            instances,
            beats,
            owners,
            owned,
            pending,
            orphans,
            cluster=cluster,
            fresh_since=since,
            activators=activators,
        )

    async def _registry(self) -> tuple[dict[str, Beat], dict[str, str], dict[str, int]]:
        listed = await self.redis.zrange(self.keys.shards, 0, -1)
        ids = [i for i in listed if is_shard_id(i)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard_id in ids:
                pipe.hgetall(self.keys.shard(shard_id))
                pipe.smembers(self.keys.shard_sessions(shard_id))
            rows = await pipe.execute()
        beats: dict[str, Beat] = {}
        owners: dict[str, str] = {}
        owned: dict[str, int] = {}
        for shard_id, raw, members in zip(ids, rows[::2], rows[1::2], strict=True):
            if raw:
                try:
                    beats[shard_id] = _usable(Beat.parse(raw))
                except (ValueError, KeyError) as exc:
                    # One damaged heartbeat must not blind the fleet: that shard counts as
                    # silent (its next beat rewrites the whole hash), the rest as they are.
                    log.warning("heartbeat of %s unusable, skipped: %s", shard_id, exc)
            owners.update(dict.fromkeys(members, shard_id))
            owned[shard_id] = len(members)
        return beats, owners, owned

    async def _demand(self, now: float) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
        """Waiting requests, released sessions, and the activators that can hold requests."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.keys.pending, "-inf", now - PENDING_WINDOW)
            pipe.zcard(self.keys.pending)
            pipe.smembers(self.keys.orphans)
            # Registrations of activators gone for long are forgotten; recent ones are live.
            pipe.zremrangebyscore(self.keys.activators, "-inf", now - 6 * ACTIVATOR_TTL)
            pipe.zrangebyscore(self.keys.activators, now - ACTIVATOR_TTL, "+inf")
            _, pending, orphans, _, registered = await pipe.execute()
        activators = []
        for addr in registered:
            problem = check_addr(addr)
            if problem:  # nginx could not take it: every config rendered with it would fail
                log.warning("activator registration %r unusable, skipped: %s", addr, problem)
            else:
                activators.append(addr)
        return int(pending), tuple(sorted(orphans)), tuple(sorted(activators))


def _usable(beat: Beat) -> Beat:
    """`beat`, unless nginx could not take its address (ValueError saying why)."""
    problem = check_addr(beat.addr) if beat.addr else None
    if problem:
        raise ValueError(problem)
    return beat
