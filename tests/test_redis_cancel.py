"""Cancelling a task that is talking to Redis must cancel it.

redis-py 8.0 and 8.1 sometimes swallow the CancelledError of a task cancelled mid-command, which
left heartbeat loops running forever after shutdown (pyproject.toml pins redis below 8 for
this). This guards every upgrade of the client.
"""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis


async def test_cancelling_a_redis_loop_always_ends_it(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)

    async def beat_forever() -> None:
        while True:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset("beat", mapping={"ts": 1})
                pipe.pexpire("beat", 1000)
                await pipe.execute()
            await client.scard("sessions")

    rng = random.Random(7)
    for _ in range(150):
        task = asyncio.create_task(beat_forever())
        await asyncio.sleep(rng.uniform(0.001, 0.01))
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, "a cancelled task kept running: the Redis client swallowed the cancellation"
    await client.aclose()
