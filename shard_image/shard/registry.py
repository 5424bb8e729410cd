"""The session registry in Redis: atomic claims, fenced writes, heartbeats, snapshots.

Every multi-key change runs as one Lua script, so capacity and single ownership hold however many
shards race (docs/redis-schema.md describes the keys). Scripts build the names of a session's
current owner's keys inside Redis, which ties this schema to one Redis (or a primary), not Redis
Cluster.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from chatscale_contract.beat import Beat
from chatscale_contract.clock import SYSTEM, Clock
from chatscale_contract.hops import ACTIVATOR_TTL
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import OUTBOX_MAXLEN

log = logging.getLogger(__name__)

# Every script declares the keys it knows beforehand as KEYS. A session's current owner is learnt
# only inside Redis, so its heartbeat and session-set names are built there from the fragments
# `Keys.shard_fragments` gives (head .. owner, head .. owner .. tail): the key builder stays the
# only place that spells a key.

# Shared by the scripts that change a session's status: the change and its event are one
# atomic write, so no status is recorded without its webhook event (chatscale_contract.webhooks).
# `reported` is the last status announced: one event per change, and none for the STARTING the
# claim writes until the owner writes it again with the session's references.
EMIT_LUA = """
local function emit_event(outbox, maxlen, skey, sid, event, payload)
  local ref = redis.call('HMGET', skey, 'workspace_id', 'account_id', 'webhooks', 'name',
                        'metadata', 'me')
  -- A WAHA client's own metadata first, then the ids chatscale knows the session by.
  local metadata = {}
  if ref[5] and ref[5] ~= '' then
    local ok, decoded = pcall(cjson.decode, ref[5])
    if ok and type(decoded) == 'table' then metadata = decoded end  -- damaged: none
  end
  metadata.workspace_id = ref[1] or ''
  metadata.account_id = ref[2] or ''
  local name = sid
  if ref[4] and ref[4] ~= '' then name = ref[4] end
  local entry = {'event', event, 'session', name, 'payload', payload,
                 'metadata', cjson.encode(metadata)}
  if ref[3] and ref[3] ~= '' then
    table.insert(entry, 'hooks')
    table.insert(entry, ref[3])
  end
  if ref[6] and ref[6] ~= '' then
    table.insert(entry, 'me')
    table.insert(entry, ref[6])
  end
  redis.call('XADD', outbox, 'MAXLEN', '~', maxlen, '*', unpack(entry))
end
local function emit_status(outbox, maxlen, skey, sid, status)
  if redis.call('HGET', skey, 'reported') == status then return end
  redis.call('HSET', skey, 'reported', status)
  local payload = {status = status}
  local err = redis.call('HGET', skey, 'error')
  if status == 'FAILED' and err and err ~= '' then payload.error = err end
  emit_event(outbox, maxlen, skey, sid, 'session.status', cjson.encode(payload))
end
"""

# KEYS: session, my session set, orphans, pending, index. ARGV: session, me, capacity, now, mode,
# head, tail. mode "new": claim if unowned or the owner's lease (heartbeat key) is gone. mode
# "reclaim": as "new", and when we already own it bump the token anyway (a restart fences
# whatever is left of our previous incarnation). Every claimed session is in the index.
# Returns {1, token} on success, {0, owner} when a live shard owns it, {-1, "full"} at capacity.
_CLAIM = """
local skey, mine, orphans, pending, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local sid, me, cap, now, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local head, tail = ARGV[6], ARGV[7]
if mode == 'adopt' and (redis.call('EXISTS', skey) == 0
    or redis.call('HGET', skey, 'desired') == 'stopped') then
  return {-2, 'gone'}  -- deleted or stopped while it moved: not to be made anew
end
local owner = redis.call('HGET', skey, 'owner') or ''
if owner == me then
  if mode ~= 'reclaim' then
    return {1, tonumber(redis.call('HGET', skey, 'token') or '0') or 0}
  end
elseif owner ~= '' and redis.call('EXISTS', head .. owner) == 1 then
  return {0, owner}
end
if owner ~= me and redis.call('SCARD', mine) >= cap then
  return {-1, 'full'}
end
if owner ~= '' and owner ~= me then
  redis.call('SREM', head .. owner .. tail, sid)
end
redis.call('SADD', mine, sid)
redis.call('SREM', orphans, sid)
redis.call('ZREM', pending, sid)
-- A damaged token (not a number) restarts the count: fencing needs only a change.
if not tonumber(redis.call('HGET', skey, 'token') or '0') then
  redis.call('HSET', skey, 'token', '0')
end
local token = redis.call('HINCRBY', skey, 'token', 1)
redis.call('HSET', skey, 'owner', me, 'updated_at', now)
if redis.call('HEXISTS', skey, 'created_at') == 0 then
  redis.call('HSET', skey, 'created_at', now, 'status', 'STARTING', 'desired', 'running')
end
redis.call('ZADD', index, 'NX', redis.call('HGET', skey, 'created_at'), sid)
return {1, token}
"""

# KEYS: session, outbox. ARGV: me, token, now, session, outbox maxlen, then field/value pairs.
# Writes only if we still own the session under this token; a new status emits its event.
# Returns 1 if written, 0 if fenced off.
_FENCED_HSET = (
    EMIT_LUA
    + """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'token')
if rec[1] ~= ARGV[1] or rec[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], unpack(ARGV, 6))
for i = 6, #ARGV - 1, 2 do
  if ARGV[i] == 'status' then emit_status(KEYS[2], ARGV[5], KEYS[1], ARGV[4], ARGV[i + 1]) end
end
return 1
"""
)

# KEYS: session, snapshot. ARGV: me, token, now, encoding, data. Fenced by the token.
_SAVE_SNAPSHOT = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'token')
if rec[1] ~= ARGV[1] or rec[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 'token', ARGV[2], 'saved_at', ARGV[3], 'encoding', ARGV[4],
           'data', ARGV[5])
return 1
"""

# KEYS: session, my session set, orphans. ARGV: session, me, token, now, desired.
# Give the session up (drain, stop, shutdown). A session that should keep running becomes an
# orphan for the autoscaler to place again.
_RELEASE = """
local sid, me, token, now, desired = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rec = redis.call('HMGET', KEYS[1], 'owner', 'token')
if rec[1] ~= me or rec[2] ~= token then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'desired', desired, 'updated_at', now)
redis.call('SREM', KEYS[2], sid)
if desired == 'running' then redis.call('SADD', KEYS[3], sid) end
return 1
"""

# KEYS: session, snapshot, my session set, orphans, index, messages seen. ARGV: session, me, token.
# Forget a session entirely (DELETE, after logout).
_FORGET = """
local sid, me, token = ARGV[1], ARGV[2], ARGV[3]
local rec = redis.call('HMGET', KEYS[1], 'owner', 'token')
if rec[1] ~= me or rec[2] ~= token then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[6])
redis.call('SREM', KEYS[3], sid)
redis.call('SREM', KEYS[4], sid)
redis.call('ZREM', KEYS[5], sid)
return 1
"""

# KEYS: session, orphans, outbox. ARGV: session, me, now, head, tail, outbox maxlen.
# Stop a session no live shard runs:
# out of its (dead or our own) owner's set, so it holds no slot and keeps no shard from being
# emptied. Returns 0 if a live shard other than us owns it.
_MARK_STOPPED = (
    EMIT_LUA
    + """
local sid, me, now, head, tail = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
if owner ~= '' and owner ~= me and redis.call('EXISTS', head .. owner) == 1 then
  return 0
end
if owner ~= '' then redis.call('SREM', head .. owner .. tail, sid) end
redis.call('HSET', KEYS[1], 'owner', '', 'status', 'STOPPED', 'desired', 'stopped',
           'updated_at', now)
redis.call('SREM', KEYS[2], sid)
emit_status(KEYS[3], ARGV[6], KEYS[1], sid, 'STOPPED')
return 1
"""
)

SNAPSHOT_ENCODING = "zlib+base64"
"""How snapshot data is stored: base64 text, so both sides read Redis with one decode mode."""


UNBOUNDED = 1 << 30
"""A capacity no shard reaches: for claims that do not open the session here."""


class Full(Exception):
    """This shard already holds its capacity of sessions."""


class Gone(Exception):
    """A session to be adopted was deleted or stopped meanwhile."""


class OwnedElsewhere(Exception):
    """A live shard owns the session."""

    def __init__(self, owner: str):
        super().__init__(f"owned by {owner}")
        self.owner = owner


class Registry:
    """Redis-backed registry for one shard. All methods are single round trips or scripts.

    The client must decode replies to str (`decode_responses=True`), as the autoscaler's does.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        shard_id: str,
        capacity: int,
        clock: Clock = SYSTEM,
    ):
        self.redis = client
        self.keys = keys
        self.shard_id = shard_id
        self.capacity = capacity
        self.clock = clock
        self._claim = client.register_script(_CLAIM)
        self._hset = client.register_script(_FENCED_HSET)
        self._save = client.register_script(_SAVE_SNAPSHOT)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)
        self._mark_stopped = client.register_script(_MARK_STOPPED)

    def _now(self) -> str:
        return repr(self.clock.time())

    async def claim(
        self,
        session_id: str,
        *,
        reclaim: bool = False,
        capacity: int | None = None,
        adopt: bool = False,
    ) -> int:
        """Own `session_id`; returns the new fencing token. Raises Full or OwnedElsewhere, and
        with `adopt` (a released session taken over) Gone when it was deleted or stopped."""
        k = self.keys
        keys = [
            k.session(session_id),
            k.shard_sessions(self.shard_id),
            k.orphans,
            k.pending,
            k.sessions,
        ]
        cap = self.capacity if capacity is None else capacity
        mode = "reclaim" if reclaim else "adopt" if adopt else "new"
        args = [session_id, self.shard_id, cap, self._now(), mode, *k.shard_fragments]
        code, value = await self._claim(keys=keys, args=args)
        if code == 1:
            return int(value)
        if code == 0:
            raise OwnedElsewhere(value)
        if code == -2:
            raise Gone(session_id)
        raise Full()

    async def update(self, session_id: str, token: int, fields: Mapping[str, str]) -> bool:
        """Fenced HSET; False means the session is no longer ours under this token."""
        pairs = [item for kv in fields.items() for item in kv]
        args = [self.shard_id, token, self._now(), session_id, OUTBOX_MAXLEN, *pairs]
        keys = [self.keys.session(session_id), self.keys.outbox]
        return bool(await self._hset(keys=keys, args=args))

    async def save_snapshot(self, session_id: str, token: int, data: bytes) -> bool:
        keys = [self.keys.session(session_id), self.keys.snapshot(session_id)]
        text = base64.b64encode(data).decode()
        args = [self.shard_id, token, self._now(), SNAPSHOT_ENCODING, text]
        return bool(await self._save(keys=keys, args=args))

    async def release(self, session_id: str, token: int, *, keep_running: bool) -> bool:
        desired = "running" if keep_running else "stopped"
        k = self.keys
        keys = [k.session(session_id), k.shard_sessions(self.shard_id), k.orphans]
        args = [session_id, self.shard_id, token, self._now(), desired]
        return bool(await self._release(keys=keys, args=args))

    async def forget(self, session_id: str, token: int) -> bool:
        k = self.keys
        keys = [
            k.session(session_id),
            k.snapshot(session_id),
            k.shard_sessions(self.shard_id),
            k.orphans,
            k.sessions,
            k.messages_seen(session_id),
        ]
        return bool(await self._forget(keys=keys, args=[session_id, self.shard_id, token]))

    async def take(self, session_id: str) -> int:
        """Claim a session no live shard runs, whatever this shard holds (to stop, rewrite or
        forget it, not to run it); returns the token. Raises OwnedElsewhere."""
        return await self.claim(session_id, reclaim=True, capacity=UNBOUNDED)

    async def forget_idle(self, session_id: str) -> None:
        """Forget a session no live shard runs (DELETE of a stopped session)."""
        await self.forget(session_id, await self.take(session_id))

    async def mark_stopped(self, session_id: str) -> None:
        """Stop a session no live shard runs. Raises OwnedElsewhere if one does after all."""
        keys = [self.keys.session(session_id), self.keys.orphans, self.keys.outbox]
        args = [session_id, self.shard_id, self._now(), *self.keys.shard_fragments, OUTBOX_MAXLEN]
        if not await self._mark_stopped(keys=keys, args=args):
            owner = (await self.record(session_id)).get("owner", "")
            raise OwnedElsewhere(owner)

    async def record(self, session_id: str) -> dict[str, str]:
        result: dict[str, str] = await self.redis.hgetall(self.keys.session(session_id))
        return result

    async def snapshot(self, session_id: str) -> bytes | None:
        """The saved auth state (zlib-compressed JSON), or None if there is none."""
        # Read undecoded: a snapshot written before they were base64 text holds raw bytes.
        encoding, data = await self.redis.execute_command(
            "HMGET", self.keys.snapshot(session_id), "encoding", "data", **{NEVER_DECODE: True}
        )
        if data is None:
            return None
        if encoding is None:  # the older binary form
            return bytes(data)
        if encoding.decode() == SNAPSHOT_ENCODING:
            return base64.b64decode(data)
        raise ValueError(f"snapshot of {session_id} has unknown encoding {encoding!r}")

    async def owned(self) -> set[str]:
        """Session ids Redis says this shard owns."""
        members: set[str] = await self.redis.smembers(self.keys.shard_sessions(self.shard_id))
        return members

    async def tokens(self, session_ids: list[str]) -> dict[str, tuple[str, int]]:
        """(owner, token) of each session, in one pipeline; for the periodic ownership check."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hmget(self.keys.session(sid), "owner", "token")
            rows = await pipe.execute()
        return {
            sid: (owner or "", int(token or 0))
            for sid, (owner, token) in zip(session_ids, rows, strict=True)
        }

    async def mark_pending(self, session_id: str) -> None:
        await self.redis.zadd(self.keys.pending, {session_id: self.clock.time()})

    async def beat(self, beat: Beat, ttl: float) -> None:
        """Publish this shard's heartbeat; the TTL is the lease on its sessions."""
        key = self.keys.shard(self.shard_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=cast("Mapping[Any, Any]", beat.fields()))
            pipe.pexpire(key, int(ttl * 1000))
            pipe.zadd(self.keys.shards, {self.shard_id: beat.ts})
            await pipe.execute()

    async def withdraw(self) -> None:
        """Remove this shard's heartbeat on a clean exit, so nobody waits for its lease."""
        await self.redis.delete(self.keys.shard(self.shard_id))

    async def heartbeats(self) -> list[Beat]:
        """Every live shard's heartbeat (expired keys are skipped)."""
        ids = await self.redis.zrange(self.keys.shards, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hgetall(self.keys.shard(sid))
            rows = await pipe.execute()
        beats = []
        for raw in rows:
            try:
                if raw:
                    beats.append(Beat.parse(raw))
            except (ValueError, KeyError) as exc:  # damaged: that shard counts as silent
                log.warning("a heartbeat is unreadable, skipped: %s", exc)
        return beats

    async def activators(self) -> list[str]:
        """Addresses of the activators registered within hops.ACTIVATOR_TTL."""
        since = self.clock.time() - ACTIVATOR_TTL
        return list(await self.redis.zrangebyscore(self.keys.activators, since, "+inf"))

    async def ring_members(self) -> list[tuple[str, str]] | None:
        """The ring as the autoscaler last applied it to nginx; None if never published."""
        raw = await self.redis.get(self.keys.ring)
        if raw is None:
            return None
        try:
            return [(str(m["id"]), str(m["addr"])) for m in json.loads(raw)["shards"]]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the published ring is unreadable; using the live shards: %s", exc)
            return None

    async def nudge(self) -> None:
        await self.redis.publish(self.keys.nudge, self.shard_id)
