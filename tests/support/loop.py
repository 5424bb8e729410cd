"""Helpers for driving the control loop in tests (real Redis, in-memory runtime)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from autoscaler.config import Config
from autoscaler.daemon import Daemon
from autoscaler.keys import Keys
from support.memruntime import MemoryRuntime

KEYS = Keys("cs:")
CAPACITY = 5


def make_config(redis_url: str, **policy: Any) -> Config:
    """Small, fast settings: 5 sessions per shard, heartbeats every 0.2 s."""
    return Config.model_validate(
        {
            "redis": {"url": redis_url},
            "shard": {"max_sessions": CAPACITY, "boot_timeout": 3},
            "heartbeat": {"interval": 0.2, "timeout": 1.0},
            "policy": {
                "min_shards": 1,
                "max_shards": 6,
                "target_utilization": 1.0,
                "buffer": {"slots": 1, "percent": 0},
                "scale_down": {"stabilization": 2, "max_step": 1},
                **policy,
            },
            "reconcile": {"interval": 0.3, "leader_ttl": 1.5},
            "nginx": {"enabled": False},
        }
    )


async def open_daemon(
    opened: list[Daemon],
    config: Config,
    runtime: MemoryRuntime,
    holder: str = "test-a",
    **kwargs: Any,
) -> Daemon:
    daemon = Daemon(config, runtime=runtime, holder=holder, **kwargs)
    await daemon.open()
    opened.append(daemon)
    return daemon


async def converge(
    daemon: Daemon, check: Callable[[], Awaitable[bool]], timeout: float = 15, what: str = ""
) -> None:
    """Run passes until `check` holds (as the interval job would)."""
    deadline = time.monotonic() + timeout
    while True:
        await daemon.reconcile()
        if await check():
            return
        if time.monotonic() > deadline:
            last = daemon.state.decisions[0] if daemon.state.decisions else None
            detail = f"last plan: {last.plan}, events {last.events}" if last else "no pass"
            raise TimeoutError(f"did not converge: {what or check}; {detail}")
        await asyncio.sleep(0.2)


async def place(client: aioredis.Redis, runtime: MemoryRuntime, sessions: list[str]) -> list[str]:
    """Put sessions on running shards with room, as shards would; the rest become pending
    demand (refused creates). Returns the ids left pending."""
    left = []
    for sid in sessions:
        for shard_id in runtime.running():
            key = KEYS.shard_sessions(shard_id)
            if runtime.shards[shard_id].shard.state == "accepting" and (
                await client.scard(key) < CAPACITY
            ):
                await client.sadd(key, sid)
                await client.hset(KEYS.session(sid), mapping={"owner": shard_id})
                await client.zrem(KEYS.pending, sid)  # as the claim script does
                break
        else:
            left.append(sid)
            await client.zadd(KEYS.pending, {sid: time.time()})
    return left


async def owned(client: aioredis.Redis, shard_id: str) -> int:
    return int(await client.scard(KEYS.shard_sessions(shard_id)))
