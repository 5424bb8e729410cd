"""The same control-plane tests against a real Docker engine and against real local processes.

Shards here are the heartbeat-only stand-in (tests/support/heartbeat_shard.py): these tests are
about the control plane (scaling, replacement, leadership, config reload), not sessions. Real
shards with Chromium run in tests/shard and in the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from support.procs import free_port, require_binary, start, stop, wait_for

from autoscaler import proctree
from autoscaler.runtime_local import MARKER, shard_roots

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
HEARTBEAT_IMAGE = "chatscale-heartbeat-test:latest"


@dataclass
class Harness:
    """One runtime under test: its config and ways to look at and break its shards."""

    kind: str
    project: str
    redis_url: str
    folder: Path
    network: str = ""
    docker: Any = None

    def config(self, **policy: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "redis": {"url": self.redis_url},
            "shard": {"max_sessions": 5, "boot_timeout": 20, "stop_timeout": 5},
            "heartbeat": {"interval": 0.5, "timeout": 2.0},
            "policy": {
                "min_shards": 1,
                "max_shards": 6,
                "target_utilization": 1.0,
                "buffer": {"slots": 1, "percent": 0},
                "scale_down": {"stabilization": 3, "max_step": 1},
                **policy,
            },
            "reconcile": {"interval": 0.5, "leader_ttl": 3},
            "runtime": {"kind": self.kind, "project": self.project},
            "nginx": {"enabled": False},
            "status": {"bind": f"127.0.0.1:{free_port()}"},
        }
        if self.kind == "docker":
            config["shard"] |= {"image": HEARTBEAT_IMAGE, "network": self.network}
        else:
            script = str(TESTS / "support" / "heartbeat_shard.py")
            config["runtime"]["local"] = {
                "base_port": free_port_block(),
                "command": [sys.executable, script],
                "log_dir": str(self.folder / "shards"),
            }
        return config

    def write(self, config: dict[str, Any], name: str = "config.yaml") -> Path:
        path = self.folder / name
        path.write_text(yaml.safe_dump(config))
        return path

    def running(self) -> list[str]:
        """Shard ids with a running container / process, by asking the system directly."""
        if self.kind == "docker":
            found = self.docker.containers.list(
                filters={"label": f"chatscale.project={self.project}"}
            )
            return sorted(c.labels["chatscale.shard"] for c in found)
        return sorted(shard_roots(self.project))

    def kill(self, shard_id: str) -> None:
        """SIGKILL one shard, as a crash would."""
        if self.kind == "docker":
            self.docker.containers.get(f"{self.project}-{shard_id}").kill(signal="SIGKILL")
            return
        os.kill(shard_roots(self.project)[shard_id].pid, signal.SIGKILL)

    def identity(self, shard_id: str) -> str:
        """Container id / pid: changes when a shard is replaced."""
        if self.kind == "docker":
            return str(self.docker.containers.get(f"{self.project}-{shard_id}").id)
        return str(shard_roots(self.project)[shard_id].pid)

    def cleanup(self) -> None:
        if self.kind == "docker":
            label = f"chatscale.project={self.project}"
            for container in self.docker.containers.list(all=True, filters={"label": label}):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
            return
        procs = proctree.scan(MARKER)
        ours = {p.pid for p in procs.values() if (p.marker or "").startswith(f"{self.project}/")}
        proctree.kill(proctree.tree(procs, ours))


def free_port_block() -> int:
    """A base port whose next 10 ports are free (local shards take base_port + n - 1)."""
    for _ in range(50):
        base = free_port()
        if base < 60000 and all(_free(base + i) for i in range(10)):
            return base
    raise RuntimeError("no block of 10 free ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise RuntimeError(
            f"no Docker engine: {exc}; start dockerd (scripts/setup-test-env does)"
        ) from exc
    yield client
    client.close()


@pytest.fixture(scope="session")
def heartbeat_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    try:
        docker_client.images.get("chatscale-shard:latest")
    except Exception as exc:
        raise RuntimeError(
            "image chatscale-shard:latest missing: run scripts/build-images"
        ) from exc
    context = tmp_path_factory.mktemp("heartbeat-image")
    shutil.copy(TESTS / "docker" / "Dockerfile.heartbeat", context / "Dockerfile")
    shutil.copy(TESTS / "support" / "heartbeat_shard.py", context / "heartbeat_shard.py")
    docker_client.images.build(path=str(context), tag=HEARTBEAT_IMAGE, rm=True)
    return HEARTBEAT_IMAGE


@pytest.fixture(scope="session")
def docker_network(docker_client: Any) -> Iterator[tuple[str, str]]:
    """A bridge network of the test's own, and its gateway (the host's address on it)."""
    name = f"chatscale-test-{secrets.token_hex(3)}"
    network = docker_client.networks.create(name, driver="bridge")
    network.reload()
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    yield name, gateway
    network.remove()


@pytest.fixture(scope="session")
def bridged_redis(
    docker_network: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A redis-server the test's containers can reach: bound to loopback and the gateway."""
    _, gateway = docker_network
    port = free_port()
    folder = tmp_path_factory.mktemp("bridged-redis")
    argv = [
        require_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        gateway,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--dir",
        str(folder),
    ]
    proc = start(argv, folder / "redis.log")
    client = redis.Redis(host=gateway, port=port)
    wait_for(lambda: bool(client.ping()), 10, "bridged redis-server")
    client.close()
    yield f"redis://{gateway}:{port}"
    stop(proc)


@pytest.fixture(params=["docker", "local"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    project = f"t{secrets.token_hex(3)}"
    if request.param == "docker":
        request.getfixturevalue("heartbeat_image")
        network, _ = request.getfixturevalue("docker_network")
        base = request.getfixturevalue("bridged_redis")
        client = request.getfixturevalue("docker_client")
        redis.Redis.from_url(f"{base}/0").flushall()
        h = Harness("docker", project, f"{base}/0", tmp_path, network, client)
    else:
        h = Harness("local", project, request.getfixturevalue("redis_url"), tmp_path)
    yield h
    h.cleanup()


@pytest.fixture
def docker_harness(
    heartbeat_image: str,
    docker_network: tuple[str, str],
    bridged_redis: str,
    docker_client: Any,
    tmp_path: Path,
) -> Iterator[Harness]:
    redis.Redis.from_url(f"{bridged_redis}/0").flushall()
    h = Harness(
        "docker",
        f"t{secrets.token_hex(3)}",
        f"{bridged_redis}/0",
        tmp_path,
        docker_network[0],
        docker_client,
    )
    yield h
    h.cleanup()
