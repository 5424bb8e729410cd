"""An in-memory Runtime for loop tests: "containers" are HeartbeatShard tasks in this process.

This implements the project's own Runtime protocol (allowed for testing the control loop); the
real runtimes are tested against a real Docker engine and real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from autoscaler.runtime import RuntimeFailure, ShardInstance
from support.heartbeat_shard import HeartbeatShard, Settings
from support.procs import free_port


@dataclass
class _Shard:
    instance: ShardInstance
    shard: HeartbeatShard
    task: asyncio.Task[None]


@dataclass
class MemoryRuntime:
    redis_url: str
    capacity: int = 5
    interval: float = 0.2
    timeout: float = 1.0
    shards: dict[str, _Shard] = field(default_factory=dict)
    starts: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    fail_starts: bool = False

    async def list_shards(self) -> list[ShardInstance]:
        return [s.instance for s in self.shards.values()]

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        entry = self.shards.get(shard_id)
        return entry.instance if entry else None

    async def start(self, shard_id: str) -> ShardInstance:
        if self.fail_starts:
            raise RuntimeFailure("injected start failure")
        entry = self.shards.get(shard_id)
        if entry is not None and entry.instance.running:
            return entry.instance
        self.starts.append(shard_id)
        port = free_port()
        settings = Settings(
            shard_id,
            port,
            addr=f"127.0.0.1:{port}",
            redis_url=self.redis_url,
            capacity=self.capacity,
            interval=self.interval,
            timeout=self.timeout,
        )
        shard = HeartbeatShard(settings)
        task = asyncio.create_task(shard.run())
        instance = ShardInstance(shard_id, True, time.time(), f"127.0.0.1:{port}")
        self.shards[shard_id] = _Shard(instance, shard, task)
        return instance

    async def stop(self, shard_id: str, timeout: float) -> None:
        entry = self.shards.pop(shard_id, None)
        if entry is None:
            return
        self.stops.append(shard_id)
        await self._end(entry)
        await entry.shard.withdraw()

    def reconfigure(self, config: object) -> None:
        """The in-memory shards take no settings from the config."""

    async def signal(self, shard_id: str, signum: int) -> None:
        raise RuntimeFailure("signals are not modelled")

    async def crash(self, shard_id: str) -> None:
        """Like SIGKILL: the shard stops beating but its "container" stays, exited."""
        entry = self.shards[shard_id]
        await self._end(entry)
        old = entry.instance
        entry.instance = ShardInstance(old.shard_id, False, old.started_at, old.addr)

    async def close(self) -> None:
        for entry in list(self.shards.values()):
            await self._end(entry)
        self.shards.clear()

    @staticmethod
    async def _end(entry: _Shard) -> None:
        entry.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entry.task

    def running(self) -> list[str]:
        return sorted(k for k, v in self.shards.items() if v.instance.running)
