"""The same control-plane tests against a real Docker engine and against real local processes.

Shards here are the heartbeat-only stand-in (tests/support/heartbeat_shard.py): these tests are
about the control plane (scaling, replacement, leadership, config reload), not sessions. Real
shards with Chromium run in tests/shard and in the end-to-end tests.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.harness import HEARTBEAT_IMAGE, Harness
from support.procs import start_redis, stop

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


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
    proc, url = start_redis(tmp_path_factory.mktemp("bridged-redis"), ("127.0.0.1", gateway))
    yield url
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
