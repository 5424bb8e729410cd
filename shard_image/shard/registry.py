"""The session registry in Redis: atomic claims, fenced writes, heartbeats, snapshots.

Every multi-key change runs as one Lua script, so capacity and single ownership hold however many
shards race (docs/redis-schema.md describes the keys). Scripts derive key names from the prefix
inside Redis, which ties this schema to one Redis (or a primary), not Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis

from autoscaler.keys import Keys
from autoscaler.model import Beat

# KEYS: none declared (see module docstring). ARGV: prefix, session, shard, capacity, now, mode.
# mode "new": claim if unowned or the owner's lease (heartbeat key) is gone.
# mode "reclaim": as "new", and when we already own it bump the token anyway (a restart fences
# whatever is left of our previous incarnation).
# Returns {1, token} on success, {0, owner} when a live shard owns it, {-1, "full"} at capacity.
_CLAIM = """
local p, sid, me, cap, now, mode = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local skey = p .. 'session:' .. sid
local owner = redis.call('HGET', skey, 'owner') or ''
if owner == me then
  if mode ~= 'reclaim' then
    return {1, tonumber(redis.call('HGET', skey, 'token') or '0')}
  end
elseif owner ~= '' and redis.call('EXISTS', p .. 'shard:' .. owner) == 1 then
  return {0, owner}
end
local mine = p .. 'shard:' .. me .. ':sessions'
if owner ~= me and redis.call('SCARD', mine) >= cap then
  return {-1, 'full'}
end
if owner ~= '' and owner ~= me then
  redis.call('SREM', p .. 'shard:' .. owner .. ':sessions', sid)
end
redis.call('SADD', mine, sid)
redis.call('SREM', p .. 'orphans', sid)
redis.call('ZREM', p .. 'pending', sid)
local token = redis.call('HINCRBY', skey, 'token', 1)
redis.call('HSET', skey, 'owner', me, 'updated_at', now)
if redis.call('HEXISTS', skey, 'created_at') == 0 then
  redis.call('HSET', skey, 'created_at', now, 'status', 'STARTING', 'desired', 'running')
end
return {1, token}
"""

# ARGV: prefix, session, shard, token, now, then field/value pairs. Writes only if we still own
# the session under this token. Returns 1 if written, 0 if fenced off.
_FENCED_HSET = """
local p, sid, me, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local skey = p .. 'session:' .. sid
local rec = redis.call('HMGET', skey, 'owner', 'token')
if rec[1] ~= me or rec[2] ~= token then return 0 end
redis.call('HSET', skey, 'updated_at', ARGV[5], unpack(ARGV, 6))
return 1
"""

# ARGV: prefix, session, shard, token, now, saved data. Snapshot write, fenced by the token.
_SAVE_SNAPSHOT = """
local p, sid, me, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rec = redis.call('HMGET', p .. 'session:' .. sid, 'owner', 'token')
if rec[1] ~= me or rec[2] ~= token then return 0 end
redis.call('HSET', p .. 'snapshot:' .. sid, 'token', token, 'saved_at', ARGV[5], 'data', ARGV[6])
return 1
"""

# ARGV: prefix, session, shard, token, now, desired. Give the session up (drain, stop, shutdown).
# A session that should keep running becomes an orphan for the autoscaler to place again.
_RELEASE = """
local p, sid, me, token, now, desired = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local skey = p .. 'session:' .. sid
local rec = redis.call('HMGET', skey, 'owner', 'token')
if rec[1] ~= me or rec[2] ~= token then return 0 end
redis.call('HSET', skey, 'owner', '', 'desired', desired, 'updated_at', now)
redis.call('SREM', p .. 'shard:' .. me .. ':sessions', sid)
if desired == 'running' then redis.call('SADD', p .. 'orphans', sid) end
return 1
"""

# ARGV: prefix, session, shard, token. Forget a session entirely (DELETE, after logout).
_FORGET = """
local p, sid, me, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local skey = p .. 'session:' .. sid
local rec = redis.call('HMGET', skey, 'owner', 'token')
if rec[1] ~= me or rec[2] ~= token then return 0 end
redis.call('DEL', skey, p .. 'snapshot:' .. sid)
redis.call('SREM', p .. 'shard:' .. me .. ':sessions', sid)
redis.call('SREM', p .. 'orphans', sid)
return 1
"""


# ARGV: prefix, session, shard, now. Stop a session no live shard runs: out of its (dead or our
# own) owner's set, so it holds no slot and keeps no shard from being emptied. Returns 0 if a
# live shard other than us owns it.
_MARK_STOPPED = """
local p, sid, me, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local skey = p .. 'session:' .. sid
local owner = redis.call('HGET', skey, 'owner') or ''
if owner ~= '' and owner ~= me and redis.call('EXISTS', p .. 'shard:' .. owner) == 1 then
  return 0
end
if owner ~= '' then redis.call('SREM', p .. 'shard:' .. owner .. ':sessions', sid) end
redis.call('HSET', skey, 'owner', '', 'status', 'STOPPED', 'desired', 'stopped', 'updated_at', now)
redis.call('SREM', p .. 'orphans', sid)
return 1
"""


class Full(Exception):
    """This shard already holds its capacity of sessions."""


class OwnedElsewhere(Exception):
    """A live shard owns the session."""

    def __init__(self, owner: str):
        super().__init__(f"owned by {owner}")
        self.owner = owner


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Registry:
    """Redis-backed registry for one shard. All methods are single round trips or scripts."""

    def __init__(self, client: aioredis.Redis, keys: Keys, shard_id: str, capacity: int):
        self.redis = client
        self.keys = keys
        self.shard_id = shard_id
        self.capacity = capacity
        self._claim = client.register_script(_CLAIM)
        self._hset = client.register_script(_FENCED_HSET)
        self._save = client.register_script(_SAVE_SNAPSHOT)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)
        self._mark_stopped = client.register_script(_MARK_STOPPED)

    def _args(self, session_id: str, *rest: object) -> list[Any]:
        return [self.keys.prefix, session_id, self.shard_id, *rest]

    async def claim(
        self, session_id: str, *, reclaim: bool = False, capacity: int | None = None
    ) -> int:
        """Own `session_id`; returns the new fencing token. Raises Full or OwnedElsewhere."""
        mode = "reclaim" if reclaim else "new"
        cap = self.capacity if capacity is None else capacity
        args = self._args(session_id, cap, repr(time.time()), mode)
        code, value = await self._claim(args=args)
        if code == 1:
            return int(value)
        if code == 0:
            raise OwnedElsewhere(_text(value))
        raise Full()

    async def update(self, session_id: str, token: int, fields: Mapping[str, str]) -> bool:
        """Fenced HSET; False means the session is no longer ours under this token."""
        pairs = [item for kv in fields.items() for item in kv]
        args = self._args(session_id, token, repr(time.time()), *pairs)
        return bool(await self._hset(args=args))

    async def save_snapshot(self, session_id: str, token: int, data: bytes) -> bool:
        args = self._args(session_id, token, repr(time.time()), data)
        return bool(await self._save(args=args))

    async def release(self, session_id: str, token: int, *, keep_running: bool) -> bool:
        desired = "running" if keep_running else "stopped"
        args = self._args(session_id, token, repr(time.time()), desired)
        return bool(await self._release(args=args))

    async def forget(self, session_id: str, token: int) -> bool:
        return bool(await self._forget(args=self._args(session_id, token)))

    async def mark_stopped(self, session_id: str) -> None:
        """Stop a session no live shard runs. Raises OwnedElsewhere if one does after all."""
        args = self._args(session_id, repr(time.time()))
        if not await self._mark_stopped(args=args):
            owner = (await self.record(session_id)).get("owner", "")
            raise OwnedElsewhere(owner)

    async def record(self, session_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.session(session_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def snapshot(self, session_id: str) -> bytes | None:
        data = await self.redis.hget(self.keys.snapshot(session_id), "data")
        if data is None:
            return None
        return data if isinstance(data, bytes) else data.encode()

    async def owned(self) -> set[str]:
        """Session ids Redis says this shard owns."""
        return {
            _text(m) for m in await self.redis.smembers(self.keys.shard_sessions(self.shard_id))
        }

    async def tokens(self, session_ids: list[str]) -> dict[str, tuple[str, int]]:
        """(owner, token) of each session, in one pipeline; for the periodic ownership check."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hmget(self.keys.session(sid), "owner", "token")
            rows = await pipe.execute()
        return {
            sid: (_text(owner or b""), int(token or 0))
            for sid, (owner, token) in zip(session_ids, rows, strict=True)
        }

    async def mark_pending(self, session_id: str) -> None:
        await self.redis.zadd(self.keys.pending, {session_id: time.time()})

    async def beat(self, fields: Mapping[str, str | int | float], ttl: float) -> None:
        """Publish this shard's heartbeat; the TTL is the lease on its sessions."""
        key = self.keys.shard(self.shard_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=cast("Mapping[Any, Any]", fields))
            pipe.pexpire(key, int(ttl * 1000))
            pipe.zadd(self.keys.shards, {self.shard_id: float(fields["ts"])})
            await pipe.execute()

    async def withdraw(self) -> None:
        """Remove this shard's heartbeat on a clean exit, so nobody waits for its lease."""
        await self.redis.delete(self.keys.shard(self.shard_id))

    async def heartbeats(self) -> list[Beat]:
        """Every live shard's heartbeat (expired keys are skipped)."""
        ids = [_text(i) for i in await self.redis.zrange(self.keys.shards, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(self.keys.shard(sid))
            rows = await pipe.execute()
        return [Beat.parse({_text(k): _text(v) for k, v in raw.items()}) for raw in rows if raw]

    async def ring_members(self) -> list[tuple[str, str]] | None:
        """The ring as the autoscaler last applied it to nginx; None if never published."""
        raw = await self.redis.get(self.keys.ring)
        if raw is None:
            return None
        return [(m["id"], m["addr"]) for m in json.loads(raw)["shards"]]

    async def nudge(self) -> None:
        await self.redis.publish(self.keys.nudge, self.shard_id)
