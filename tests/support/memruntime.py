"""An in-memory Runtime for loop tests: "containers" are HeartbeatShards in this process.

This implements the project's own Runtime protocol (allowed for testing the control loop); the
real runtimes are tested against a real Docker engine and real processes. The stand-ins run on
the test's fake clock and beat when the test says so (`beat`), so a test decides exactly how
much time passes between two reconcile passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoscaler.engine.cluster import Cluster
from autoscaler.runtimes.base import RuntimeFailure, ShardInstance
from chatscale_contract.clock import Clock
from chatscale_contract.config import Config
from support.heartbeat_shard import HeartbeatShard, Settings
from support.procs import free_port

LEASE = 600.0
"""Real seconds a stand-in's heartbeat key lives: Redis expires keys in real time, while the
loop judges freshness by the fake clock; a crash ends the lease at once (see `crash`)."""


@dataclass
class _Shard:
    instance: ShardInstance
    shard: HeartbeatShard


@dataclass
class MemoryRuntime:
    redis_url: str
    clock: Clock
    capacity: int = 5
    shards: dict[str, _Shard] = field(default_factory=dict)
    starts: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    fail_starts: bool = False
    fail_lists: bool = False
    nodes: Cluster | None = None
    """What `cluster()` reports: None like one Docker host, or a cluster a test describes."""

    async def check(self) -> None:
        """Always usable."""

    async def cluster(self) -> Cluster | None:
        return self.nodes

    async def replace(self, shard_id: str, timeout: float) -> None:
        await self.stop(shard_id, timeout)
        await self.start(shard_id)

    async def list_shards(self) -> list[ShardInstance]:
        if self.fail_lists:
            raise RuntimeFailure("injected list failure")
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
        addr = f"127.0.0.1:{port}"
        settings = Settings(
            shard_id, port, addr=addr, redis_url=self.redis_url, capacity=self.capacity, lease=LEASE
        )
        shard = HeartbeatShard(settings, self.clock)
        await shard.start()
        instance = ShardInstance(shard_id, True, self.clock.time(), addr)
        self.shards[shard_id] = _Shard(instance, shard)
        return instance

    async def stop(self, shard_id: str, timeout: float) -> None:
        entry = self.shards.pop(shard_id, None)
        if entry is None:
            return
        self.stops.append(shard_id)
        if entry.instance.running:  # a crashed one has stopped already
            await entry.shard.withdraw()
            await entry.shard.stop()

    def reconfigure(self, config: Config) -> None:
        """The in-memory shards take no settings from the config."""

    async def signal(self, shard_id: str, signum: int) -> None:
        raise RuntimeFailure("signals are not modelled")

    async def beat(self) -> None:
        """Every running stand-in sends a heartbeat, as each does once per interval."""
        for entry in self.shards.values():
            if entry.instance.running:
                await entry.shard.beat()

    def shard(self, shard_id: str) -> HeartbeatShard:
        return self.shards[shard_id].shard

    async def crash(self, shard_id: str) -> None:
        """Like SIGKILL: the shard stops beating and its "container" stays, exited. Its lease
        ends at once (in real Redis it would lapse after the heartbeat timeout)."""
        entry = self.shards[shard_id]
        await entry.shard.withdraw()
        await entry.shard.stop()
        old = entry.instance
        entry.instance = ShardInstance(old.shard_id, False, old.started_at, old.addr)

    async def close(self) -> None:
        for entry in list(self.shards.values()):
            if entry.instance.running:
                await entry.shard.stop()
        self.shards.clear()

    def running(self) -> list[str]:
        return sorted(k for k, v in self.shards.items() if v.instance.running)
