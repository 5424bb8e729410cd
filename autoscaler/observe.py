"""Observe: read heartbeats and the registry from Redis and the shard list from the runtime.

`Observer.observe()` does the I/O and returns a `Fleet` snapshot; `classify` and `to_observed`
turn it into the engine's input and are purely computational. If Redis or the runtime cannot be
read, the snapshot says so and the engine holds: missing data never shrinks the fleet.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.config import Config, parse_size
from autoscaler.keys import Keys
from autoscaler.model import Beat, Observed, ShardState, ShardView, shard_number
from autoscaler.runtime import Runtime, RuntimeFailure, ShardInstance

log = logging.getLogger(__name__)
PENDING_WINDOW = 60.0
"""Refused creates younger than this count as demand (clients retry after Retry-After)."""


@dataclass(frozen=True)
class Fleet:
    """Everything one observation read. `error` is set when it could not read it all."""

    now: float
    instances: dict[str, ShardInstance] = field(default_factory=dict)
    beats: dict[str, Beat] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """session id -> shard id, from the shards' session sets."""
    owned: dict[str, int] = field(default_factory=dict)
    """shard id -> size of its session set."""
    pending: int = 0
    orphans: tuple[str, ...] = ()
    error: str = ""
    fresh_since: float = 0.0
    """Since when observations have been readable without a gap. Heartbeats that went missing
    while Redis was unreachable prove nothing about the shards."""


def classify(
    instance: ShardInstance | None,
    beat: Beat | None,
    owned: int,
    now: float,
    config: Config,
    fresh_since: float = 0.0,
) -> ShardState | None:
    """The engine's view of one shard; None if it is not ours to manage. Purely computational.

    - running with a fresh heartbeat: ready (or draining, as the shard reports);
    - running, silent, but started less than `boot_timeout` ago: starting;
    - running and silent for longer, or not running at all: dead (it gets replaced);
    - no container or process, but sessions still recorded as its own: dead (they come back
      when it is replaced under the same id);
    - no container or process and nothing owned: not a shard to manage.
    """
    fresh = beat is not None and beat.fresh(now, config.heartbeat.timeout)
    if instance is None:
        return ShardState.DEAD if owned > 0 else None
    if not instance.running:
        return ShardState.DEAD
    if fresh and beat is not None:
        return ShardState.DRAINING if beat.state == "draining" else ShardState.READY
    if now - instance.started_at <= config.shard.boot_timeout:
        return ShardState.STARTING
    if now - fresh_since <= config.heartbeat.timeout:
        # Redis was unreachable a moment ago: the shard had no chance to beat yet. Wait a
        # whole timeout of readable data before calling a running shard dead.
        return ShardState.STARTING
    return ShardState.DEAD


def to_observed(fleet: Fleet, config: Config) -> Observed:
    """The engine's input from one observation. Purely computational, no side effects."""
    max_sessions = config.shard.max_sessions
    limit = parse_size(config.shard.memory_limit)
    if fleet.error:
        return Observed((), max_sessions, limit, fresh=False, stale_reason=fleet.error)
    views = []
    for shard_id in _known_ids(fleet):
        instance, beat = fleet.instances.get(shard_id), fleet.beats.get(shard_id)
        owned = fleet.owned.get(shard_id, 0)
        state = classify(instance, beat, owned, fleet.now, config, fleet.fresh_since)
        if state is not None:
            views.append(_view(shard_id, state, beat, owned, fleet.now))
    return Observed(tuple(views), max_sessions, limit, pending=fleet.pending)


def _known_ids(fleet: Fleet) -> list[str]:
    ids = set(fleet.instances) | {shard for shard, count in fleet.owned.items() if count}
    return sorted(ids, key=shard_number)


def _view(shard_id: str, state: ShardState, beat: Beat | None, owned: int, now: float) -> ShardView:
    if beat is None:
        return ShardView(shard_id, state, owned)
    # The registry's session set is the truth about ownership; a live heartbeat can lag it by
    # one interval, so the larger of the two is used (never under-count a busy shard).
    sessions = max(beat.sessions, owned)
    return ShardView(
        shard_id, state, sessions, beat.memory_bytes, now - beat.ts, beat.draining_since
    )


class Observer:
    """Reads one consistent-enough picture of the fleet per reconcile pass."""

    def __init__(self, config: Config, client: aioredis.Redis, runtime: Runtime):
        self.config = config
        self.redis = client
        self.runtime = runtime
        self.keys = Keys(config.redis.key_prefix)
        self.fresh_since: float | None = None

    async def observe(self) -> Fleet:
        now = time.time()
        try:
            instances = {i.shard_id: i for i in await self.runtime.list_shards()}
        except RuntimeFailure as exc:
            self.fresh_since = None
            return Fleet(now, error=f"runtime unreadable: {exc}")
        try:
            beats, owners, owned = await self._registry()
            pending, orphans = await self._demand(now)
        except (RedisError, OSError, ValueError, KeyError) as exc:
            self.fresh_since = None
            return Fleet(now, instances, error=f"redis unreadable: {exc}")
        if self.fresh_since is None:
            self.fresh_since = now
        since = self.fresh_since
        return Fleet(now, instances, beats, owners, owned, pending, orphans, fresh_since=since)

    async def _registry(self) -> tuple[dict[str, Beat], dict[str, str], dict[str, int]]:
        listed = await self.redis.zrange(self.keys.shards, 0, -1)
        ids = [str(i) for i in listed if _is_shard(str(i))]
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
                beats[shard_id] = Beat.parse(raw)
            owners.update(dict.fromkeys(members, shard_id))
            owned[shard_id] = len(members)
        return beats, owners, owned

    async def _demand(self, now: float) -> tuple[int, tuple[str, ...]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.keys.pending, "-inf", now - PENDING_WINDOW)
            pipe.zcard(self.keys.pending)
            pipe.smembers(self.keys.orphans)
            _, pending, orphans = await pipe.execute()
        return int(pending), tuple(sorted(orphans))


def _is_shard(shard_id: str) -> bool:
    try:
        shard_number(shard_id)
    except ValueError:
        return False
    return True
