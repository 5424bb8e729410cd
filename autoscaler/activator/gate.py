"""The activator's door: only requests with a key that grants something are held (an unknown
caller must not be able to wake a fleet from zero or fill the hold queue). What the key may do
is the shard's to decide once the request is passed on."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatscale_contract.auth import Keyring
from chatscale_contract.keys import Keys

REFRESH = 2.0
"""Seconds a loaded keyring is used before it is read again."""


class Gate:
    def __init__(self, client: aioredis.Redis, keys: Keys, env_key: str = ""):
        self.redis, self.keys, self.env_key = client, keys, env_key
        self._keyring: Keyring | None = None
        self._loaded = 0.0

    async def admits(self, given: str) -> bool:
        """Whether to hold a request with key `given`. Before any autoscaler published keys
        (or while Redis does not answer) the shard decides: it fails closed itself."""
        keyring = await self._current()
        if keyring is None or keyring.mode is None:
            return True
        return keyring.grant_for(given) is not None

    async def _current(self) -> Keyring | None:
        if self._keyring is None or time.monotonic() - self._loaded > REFRESH:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.get(self.keys.auth_mode)
                    pipe.hgetall(self.keys.api_keys)
                    mode, entries = await pipe.execute()
            except RedisError:
                return self._keyring
            self._keyring = Keyring.load(mode, entries, self.env_key)
            self._loaded = time.monotonic()
        return self._keyring
