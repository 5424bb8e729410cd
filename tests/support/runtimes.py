"""Wrappers around any Runtime (in-memory, Docker, local) that let a test watch or hold it.

They pass every call on to the real runtime and add one thing each, so a test needs neither
monkeypatching nor a runtime of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from autoscaler.engine.cluster import Cluster
from autoscaler.runtimes.base import Runtime, ShardInstance
from chatscale_contract.config import Config


class Passthrough:
    """Forwards the Runtime protocol to `inner`."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner

    async def check(self) -> None:
        await self.inner.check()

    async def list_shards(self) -> list[ShardInstance]:
        return await self.inner.list_shards()

    async def cluster(self) -> Cluster | None:
        return await self.inner.cluster()

    async def replace(self, shard_id: str, timeout: float) -> None:
        await self.inner.replace(shard_id, timeout)

    async def start(self, shard_id: str) -> ShardInstance:
        return await self.inner.start(shard_id)

    async def stop(self, shard_id: str, timeout: float) -> None:
        await self.inner.stop(shard_id, timeout)

    async def signal(self, shard_id: str, signum: int) -> None:
        await self.inner.signal(shard_id, signum)

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        return await self.inner.inspect(shard_id)

    def reconfigure(self, config: Config) -> None:
        self.inner.reconfigure(config)


class StopAudit(Passthrough):
    """Records how many sessions each shard owned (per `count`) at the moment it was stopped:
    the invariant is that this is always 0."""

    def __init__(self, inner: Runtime, count: Callable[[str], Awaitable[int]]) -> None:
        super().__init__(inner)
        self.count = count
        self.owned_at_stop: list[int] = []

    async def stop(self, shard_id: str, timeout: float) -> None:
        self.owned_at_stop.append(await self.count(shard_id))
        await super().stop(shard_id, timeout)


class StallingStarts(Passthrough):
    """Starts the shard, then never returns: the caller is killed while a start is in flight."""

    def __init__(self, inner: Runtime) -> None:
        super().__init__(inner)
        self.started = asyncio.Event()

    async def start(self, shard_id: str) -> ShardInstance:
        await super().start(shard_id)
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
