"""Listening on a pub/sub channel against real Redis: a quiet channel is not a broken one, and a
connection Redis drops is made again. (A listener on a client with a 5 s read timeout, as the
daemon's was, dropped its subscription after 5 idle seconds and missed what came meanwhile.)"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from autoscaler import channel


async def test_messages_after_a_quiet_spell_and_after_a_dropped_connection(
    redis_url: str, aredis: aioredis.Redis
) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(channel.listen(redis_url, "t:chan", got.put_nowait))
    try:
        for _ in range(100):  # subscribed?
            if await aredis.pubsub_numsub("t:chan") == [("t:chan", 1)]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(6)  # longer than the daemon's 5 s read timeout
        await aredis.publish("t:chan", "after a quiet spell")
        assert await asyncio.wait_for(got.get(), 5) == "after a quiet spell"
        await aredis.client_kill_filter(_type="pubsub")
        for _ in range(100):
            await aredis.publish("t:chan", "again")
            with contextlib.suppress(TimeoutError):
                assert await asyncio.wait_for(got.get(), 0.1) == "again"
                break
        else:
            raise AssertionError("no message after Redis dropped the subscriber")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
