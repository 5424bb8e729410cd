"""The narrow interface to wherever shards run: list, start, stop, signal, inspect.

Implementations: `docker.DockerRuntime` (containers, the default) and `local.LocalRuntime`
(child processes, no Docker); `autoscaler.runtimes.make_runtime` picks one from the config.
None keeps state in memory that a restart would lose: Docker labels, or a marker in each
process's environment, are the only truth about which shards exist.
"""

from __future__ import annotations

from typing import Protocol

from autoscaler.engine.fleet import ShardInstance
from chatscale_contract.config import Config
from chatscale_contract.ids import shard_number

__all__ = ["Runtime", "RuntimeFailure", "ShardInstance", "by_number", "shard_env"]


class RuntimeFailure(Exception):
    """The runtime could not do what was asked; the message says what and why."""


class Runtime(Protocol):
    """Where shards run. Methods are idempotent: starting a running shard is not an error."""

    async def list_shards(self) -> list[ShardInstance]: ...

    async def start(self, shard_id: str) -> ShardInstance:
        """Start `shard_id` (replacing a stopped leftover of the same id)."""
        ...

    async def stop(self, shard_id: str, timeout: float) -> None:
        """SIGTERM, wait up to `timeout`, then kill; remove what is left. Missing is fine."""
        ...

    async def signal(self, shard_id: str, signum: int) -> None: ...

    async def inspect(self, shard_id: str) -> ShardInstance | None: ...

    def reconfigure(self, config: Config) -> None:
        """Use `config` for shards started from now on (a config reload)."""
        ...


def shard_env(config: Config, shard_id: str, addr: str, port: int) -> dict[str, str]:
    """The environment every shard gets, whatever runs it. Purely computational."""
    return {
        **config.shard.env,
        "SHARD_ID": shard_id,
        "SHARD_ADDR": addr,
        "PORT": str(port),
        "REDIS_URL": config.redis.url,
        "KEY_PREFIX": config.redis.key_prefix,
        "MAX_SESSIONS": str(config.shard.max_sessions),
        "HEARTBEAT_INTERVAL": f"{config.heartbeat.interval:g}",
        "HEARTBEAT_TIMEOUT": f"{config.heartbeat.timeout:g}",
        "MEMORY_HIGH_WATERMARK": f"{config.policy.memory_high_watermark:g}",
        "STOP_TIMEOUT": str(config.shard.stop_timeout),
    }


def by_number(instances: list[ShardInstance]) -> list[ShardInstance]:
    return sorted(instances, key=lambda i: shard_number(i.shard_id))
