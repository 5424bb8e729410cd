"""The narrow interface to wherever shards run: list, start, stop, replace, signal, inspect.

Implementations: `docker.DockerRuntime` (containers, the default), `local.LocalRuntime` (child
processes, no Docker) and `swarm.SwarmRuntime` (one Swarm service per shard, many hosts);
`autoscaler.runtimes.make_runtime` picks one from the config.
None keeps state in memory that a restart would lose: Docker labels, or a marker in each
process's environment, are the only truth about which shards exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from autoscaler.engine.cluster import Cluster
from autoscaler.engine.fleet import ShardInstance
from chatscale_contract.config import Config
from chatscale_contract.ids import shard_number

__all__ = ["Runtime", "RuntimeFailure", "ShardInstance", "by_number", "epoch", "shard_env"]

LABEL_PROJECT = "chatscale.project"
LABEL_SHARD = "chatscale.shard"
LABEL_CONFIG = "chatscale.config"
"""Labels on every shard container or service: the project, the shard id, and a hash of the
shard settings it was started with."""
LABEL_IMAGE = "chatscale.image"
"""On a shard service (Swarm): the image shard.image named when the service was made, as the
manager's engine knew it (a registry digest `name@sha256:...`, else an image id). A container
records its image itself."""


class RuntimeFailure(Exception):
    """The runtime could not do what was asked; the message says what and why."""


class Runtime(Protocol):
    """Where shards run. Methods are idempotent: starting a running shard is not an error."""

    async def check(self) -> None:
        """Raise RuntimeFailure, saying what to do, if shards cannot run here at all."""
        ...

    async def list_shards(self) -> list[ShardInstance]: ...

    async def cluster(self) -> Cluster | None:
        """The nodes and how much room they have, where the runtime knows (Swarm); None where
        it does not bound placements (one Docker host, local processes)."""
        ...

    async def start(self, shard_id: str) -> ShardInstance:
        """Start `shard_id` (replacing a stopped leftover of the same id)."""
        ...

    async def stop(self, shard_id: str, timeout: float) -> None:
        """SIGTERM, wait up to `timeout`, then kill; remove what is left. Missing is fine."""
        ...

    async def replace(self, shard_id: str, timeout: float) -> None:
        """A new instance of a dead shard under the same id (its sessions come back)."""
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
        "EGRESS_ALLOW": ",".join(config.shard.egress_allow),
    }


def by_number(instances: list[ShardInstance]) -> list[ShardInstance]:
    return sorted(instances, key=lambda i: shard_number(i.shard_id))


def epoch(stamp: str) -> float:
    """Epoch seconds of one of Docker's RFC 3339 timestamps (nanoseconds, or none, and "Z" or an
    offset); 0 if unset."""
    if not stamp or stamp.startswith("0001-"):
        return 0.0
    text = stamp.replace("Z", "+00:00")
    main, zone = text[:19], text[19:]
    fraction = ""
    if zone.startswith("."):
        digits = zone[1:].split("+")[0].split("-")[0]
        fraction, zone = digits[:6], zone[1 + len(digits) :]
    return datetime.fromisoformat(f"{main}.{fraction.ljust(6, '0')}{zone}").timestamp()
