"""The narrow interface to wherever shards run: list, start, stop, signal, inspect.

Implementations: `runtime_docker.DockerRuntime` (containers, the default) and
`runtime_local.LocalRuntime` (child processes, no Docker). Neither keeps state in memory that a
restart would lose: Docker labels, or pid files plus a marker in each process's environment, are
the only truth about which shards exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.config import Config
from autoscaler.model import shard_number


class RuntimeFailure(Exception):
    """The runtime could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class ShardInstance:
    """One shard as the runtime sees it."""

    shard_id: str
    running: bool
    started_at: float
    """Epoch seconds the container or process started (for the boot timeout)."""
    addr: str
    """host:port nginx and other shards use to reach it (its stable name in the ring)."""
    endpoint: str = ""
    """host:port the autoscaler itself can reach it at (a container IP from the host);
    empty when `addr` works."""
    config_hash: str = ""
    memory_limit_bytes: int = 0
    """0 when the runtime sets no limit (local processes)."""
    detail: str = ""
    labels: dict[str, str] = field(default_factory=dict)


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
