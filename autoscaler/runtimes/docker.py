"""Shards as Docker containers, through the docker SDK (synchronous; called off the event loop).

Containers carry labels (project, shard id, config hash); the label query is the only truth about
which shards exist, so a restarted autoscaler sees exactly what is running. Argument building is a
pure function with its own tests, as docker-py itself does it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from autoscaler.engine.cluster import Cluster
from autoscaler.runtimes.base import (
    LABEL_CONFIG,
    LABEL_PROJECT,
    LABEL_SHARD,
    RuntimeFailure,
    ShardInstance,
    by_number,
    epoch,
    shard_env,
)
from chatscale_contract.config import Config, parse_size

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

log = logging.getLogger(__name__)


def engine_errors() -> tuple[type[Exception], ...]:
    """What a Docker SDK call raises when the engine refuses it or does not answer at all (the
    HTTP library's own errors, which the SDK lets through): both mean RuntimeFailure here."""
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.RequestException)


def container_name(config: Config, shard_id: str) -> str:
    return f"{config.runtime.project}-{shard_id}"


def container_args(config: Config, shard_id: str) -> dict[str, Any]:
    """Keyword arguments for `containers.run` of one shard. Purely computational."""
    name = container_name(config, shard_id)
    port = config.shard.port
    memory = parse_size(config.shard.memory_limit)
    args: dict[str, Any] = {
        "image": config.shard.image,
        "name": name,
        "hostname": name,
        "detach": True,
        "labels": {
            **config.shard.labels,
            LABEL_PROJECT: config.runtime.project,
            LABEL_SHARD: shard_id,
            LABEL_CONFIG: config.fingerprint(),
        },
        "environment": shard_env(config, shard_id, f"{name}:{port}", port),
        "mem_limit": memory,
        # Equal to mem_limit: no swap on top of the limit, so the watermark means what it says.
        "memswap_limit": memory,
        "nano_cpus": int(config.shard.cpus * 1e9),
        "shm_size": parse_size(config.shard.shm_size),
        "stop_signal": "SIGTERM",
        # The autoscaler replaces dead shards itself (level-triggered); a Docker restart policy
        # would race it for the same container name.
        "restart_policy": {"Name": "no"},
        "init": True,
    }
    if config.shard.network:
        args["network"] = config.shard.network
    return args


class DockerRuntime:
    """Runtime over a Docker engine. Every call runs the SDK in a worker thread."""

    def __init__(self, config: Config, client: docker.DockerClient | None = None):
        self.config = config
        self._client = client

    def reconfigure(self, config: Config) -> None:
        self.config = config

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            import docker as sdk

            self._client = sdk.from_env()
        return self._client

    async def check(self) -> None:
        await asyncio.to_thread(self._call, self.client.ping)

    async def list_shards(self) -> list[ShardInstance]:
        return await asyncio.to_thread(self._list)

    async def cluster(self) -> Cluster | None:
        return None  # one host; Docker does not refuse a container for want of memory

    async def replace(self, shard_id: str, timeout: float) -> None:
        await self.stop(shard_id, timeout)
        await self.start(shard_id)

    async def start(self, shard_id: str) -> ShardInstance:
        return await asyncio.to_thread(self._start, shard_id)

    async def stop(self, shard_id: str, timeout: float) -> None:
        await asyncio.to_thread(self._stop, shard_id, timeout)

    async def signal(self, shard_id: str, signum: int) -> None:
        await asyncio.to_thread(self._signal, shard_id, signum)

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        return await asyncio.to_thread(self._inspect, shard_id)

    # --- synchronous parts, run in threads --------------------------------------------------

    def _list(self) -> list[ShardInstance]:
        label = f"{LABEL_PROJECT}={self.config.runtime.project}"
        containers = self._call(self.client.containers.list, all=True, filters={"label": label})
        image = self._image_id()
        return by_number([self._instance(c, image) for c in containers if LABEL_SHARD in c.labels])

    def _image_id(self) -> str:
        """The id of the image shard.image names now ("" when the engine has none by it)."""
        import docker.errors

        try:
            return str(self.client.images.get(self.config.shard.image).id)
        except docker.errors.DockerException:
            return ""

    def _start(self, shard_id: str) -> ShardInstance:
        existing = self._find(shard_id)
        if existing is not None and existing.status == "running":
            return self._instance(existing)
        if existing is not None:
            self._call(existing.remove, force=True)
        args = container_args(self.config, shard_id)
        log.info("starting container %s (%s)", args["name"], args["image"])
        container = self._call(self.client.containers.run, **args)
        container.reload()
        return self._instance(container)

    def _stop(self, shard_id: str, timeout: float) -> None:
        container = self._find(shard_id)
        if container is None:
            return
        log.info("stopping container %s", container.name)
        if container.status == "running":
            self._call(container.stop, timeout=int(timeout))
        self._call(container.remove, force=True)

    def _signal(self, shard_id: str, signum: int) -> None:
        container = self._find(shard_id)
        if container is None:
            raise RuntimeFailure(f"no container for {shard_id}")
        self._call(container.kill, signal=signum)

    def _inspect(self, shard_id: str) -> ShardInstance | None:
        container = self._find(shard_id)
        return None if container is None else self._instance(container)

    def _find(self, shard_id: str) -> Container | None:
        import docker.errors

        try:
            return self.client.containers.get(container_name(self.config, shard_id))
        except docker.errors.NotFound:
            return None
        except engine_errors() as exc:
            raise RuntimeFailure(f"docker: {exc}") from exc

    def _instance(self, container: Container, image: str = "") -> ShardInstance:
        """`image`: the id shard.image names now, to tell a shard on an older image."""
        state = container.attrs.get("State", {})
        host_config = container.attrs.get("HostConfig", {})
        shard_id = container.labels[LABEL_SHARD]
        port = self.config.shard.port
        return ShardInstance(
            shard_id=shard_id,
            running=container.status == "running",
            started_at=epoch(state.get("StartedAt", "")),
            addr=f"{container.name}:{port}",
            endpoint=_endpoint(container, port),
            config_hash=container.labels.get(LABEL_CONFIG, ""),
            memory_limit_bytes=int(host_config.get("Memory") or 0),
            detail=container.status,
            labels=dict(container.labels),
            image_changed=bool(image and container.attrs.get("Image") not in ("", None, image)),
        )

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except engine_errors() as exc:
            raise RuntimeFailure(f"docker: {exc}") from exc


def _endpoint(container: Container, port: int) -> str:
    """The container's IP on its first network: reachable from the host and from peers."""
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    for network in networks.values():
        if network.get("IPAddress"):
            return f"{network['IPAddress']}:{port}"
    return ""
