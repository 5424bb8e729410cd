"""One acting autoscaler at a time: a Redis lock with a TTL, renewed while the holder lives.

A standby keeps observing (its status page stays live) but acts only once the lock is free,
which happens at most `ttl` seconds after the leader dies.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# ARGV: holder, ttl ms. Take the lock if free, or extend it if already ours.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaderLock:
    def __init__(self, client: aioredis.Redis, key: str, holder: str, ttl: float):
        self.key = key
        self.holder = holder
        self.ttl_ms = int(ttl * 1000)
        self.redis = client
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    async def acquire_or_renew(self) -> bool:
        """True if this process holds the lock now (and for the next `ttl` seconds)."""
        return bool(await self._acquire(keys=[self.key], args=[self.holder, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.holder])
