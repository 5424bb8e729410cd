"""Reading the fleet from Redis for the activator, once per POLL seconds while requests wait.

However many requests are held, one task reads (one pipelined round trip per poll), and every
waiting request wakes on each new reading. Nothing is read while nobody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.activator.choose import Reading
from chatscale_contract.beat import Beat
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
POLL = 0.1
"""Seconds between two readings while requests wait: how late a new shard is noticed."""


class FleetWatch:
    def __init__(self, client: aioredis.Redis, keys: Keys, poll: float = POLL):
        self.redis = client
        self.keys = keys
        self.poll = poll
        self.latest = Reading()
        self._new = asyncio.Condition()
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None

    async def read(self) -> Reading:
        """Read the fleet now (live heartbeats and the published ring); raises RedisError."""
        ids = await self.redis.zrange(self.keys.shards, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.ring)
            for shard_id in ids:
                pipe.hgetall(self.keys.shard(shard_id))
            ring_raw, *rows = await pipe.execute()
        beats = {}
        for raw in rows:
            with contextlib.suppress(KeyError, ValueError):  # a malformed beat is no shard
                beat = Beat.parse(raw)
                beats[beat.id] = beat
        self.latest = Reading(beats, _ring(ring_raw))
        return self.latest

    async def owner(self, sid: str) -> str:
        """The shard the registry says holds `sid`, "" if none."""
        if not sid:
            return ""
        return await self.redis.hget(self.keys.session(sid), "owner") or ""

    async def newer(self, than: Reading, timeout: float) -> Reading:
        """The first reading after `than`, or the latest one when `timeout` passes first."""
        self._waiting += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="activator fleet watch")
        try:
            async with self._new:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._new.wait_for(lambda: self.latest is not than), max(0.0, timeout)
                    )
        finally:
            self._waiting -= 1
        return self.latest

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._waiting > 0:
            try:
                await self.read()
            except (RedisError, OSError) as exc:
                log.warning("activator cannot read the fleet: %s", exc)
            else:
                async with self._new:
                    self._new.notify_all()
            await asyncio.sleep(self.poll)


def _ring(raw: str | None) -> tuple[tuple[str, str], ...] | None:
    if raw is None:
        return None
    try:
        return tuple((m["id"], m["addr"]) for m in json.loads(raw)["shards"])
    except (ValueError, KeyError, TypeError):
        return None
