"""The shard's Redis clients, for a plain URL or Redis Sentinel
(chatscale_contract/redisurl.py). With Sentinel the client asks the sentinels for the current
primary on every new connection, so after a failover the next command reaches the new one.
Its twin is on the other side (the autoscaler and the shard import neither each other)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from chatscale_contract.redisurl import parse_redis_url


class _PrimaryClient(aioredis.Redis):  # type: ignore[misc]  # redis-py is untyped here
    """The primary's client; closing it closes the sentinels' connections too."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client (decode_responses=True, as both sides read Redis) for `url`."""
    target = parse_redis_url(url)
    if not target.sentinel:
        return aioredis.Redis.from_url(url, decode_responses=True, **options)
    auth = {"username": target.username, "password": target.password}
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": options.get("socket_timeout", 5)},
        decode_responses=True,
        db=target.db,
        **auth,
        **options,
    )
    client = sentinel.master_for(target.service, redis_class=_PrimaryClient)
    client.sentinel = sentinel
    return client
