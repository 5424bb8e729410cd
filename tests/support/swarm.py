"""A Docker swarm owned by one test, and the stack deployed on it; both undone afterwards.

`single_node_swarm()` makes the test machine's own Docker engine a one-node swarm (the engine
scripts/setup-test-env starts) and always leaves it again, also when the test fails: every
service it created is removed, its containers are waited for, the node leaves the swarm. It
refuses to run where a swarm already exists, so it never disturbs one it did not make.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import yaml

from support.procs import free_port, port_open, wait_for

STACK = "chatscale"


def run(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stdout}{result.stderr}")
    return result.stdout


def swarm_state(client: docker.DockerClient) -> str:
    return str(client.info().get("Swarm", {}).get("LocalNodeState", ""))


def leave(client: docker.DockerClient, gwbridge_before: bool) -> None:
    """Leave the swarm, and remove the docker_gwbridge network joining it made (it outlives
    the swarm) unless it was there before."""
    run("docker", "swarm", "leave", "--force", check=False)
    wait_for(lambda: swarm_state(client) == "inactive", 30, "the engine to leave the swarm")
    if not gwbridge_before:
        run("docker", "network", "rm", "docker_gwbridge", check=False)


# The label a test puts on the swarm node it made, so that scripts/clean-test-leftovers can tell a
# swarm a killed test run left behind (no `finally` ran) from one somebody else made.
TEST_MARK = "chatscale.test=1"


def has_gwbridge(client: docker.DockerClient) -> bool:
    return bool(client.networks.list(names=["docker_gwbridge"]))


@contextlib.contextmanager
def single_node_swarm() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    if swarm_state(client) != "inactive":
        raise RuntimeError("this Docker engine is already part of a swarm: not touching it")
    gwbridge_before = has_gwbridge(client)
    run("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        node = client.nodes.list()[0]
        run("docker", "node", "update", "--label-add", TEST_MARK,
            "--label-add", "chatscale.redis=true", str(node.id))  # fmt: skip
        yield client
    finally:
        remove_services(client)
        leave(client, gwbridge_before)
        client.close()


def remove_services(client: docker.DockerClient) -> None:
    """Every service, then every container they left and the stacks' volumes, gone."""
    api: Any = client.api  # the SDK's low-level client is untyped
    for service in api.services():
        with contextlib.suppress(docker.errors.DockerException):
            api.remove_service(service["ID"])

    def tasks_gone() -> bool:
        return not client.containers.list(all=True, filters={"label": "com.docker.swarm.task"})

    with contextlib.suppress(TimeoutError):
        wait_for(tasks_gone, 90, "the swarm's task containers to go")
    for container in client.containers.list(all=True, filters={"label": "com.docker.swarm.task"}):
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
    # A stack's named volumes outlive `docker stack rm`; Redis's would carry one test's
    # sessions into the next.
    for volume in client.volumes.list(filters={"label": "com.docker.stack.namespace"}):
        with contextlib.suppress(docker.errors.DockerException):
            volume.remove(force=True)


class Stack:
    """docker-stack.yml as shipped, plus an override publishing Redis and the status page on
    this machine's ports for the test, deployed with a test config."""

    def __init__(self, root: Path, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.ports = {
            "front": free_port(),
            "waha": free_port(),
            "status": free_port(),
            "redis": free_port(),
        }
        shutil.copy(root / "docker-stack.yml", folder / "docker-stack.yml")
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        published = {"protocol": "tcp", "mode": "host"}
        override = {
            "version": "3.8",
            "services": {
                "redis": {
                    "ports": [{"target": 6379, "published": self.ports["redis"], **published}]
                },
                "autoscaler": {
                    "ports": [{"target": 8080, "published": self.ports["status"], **published}]
                },
            },
        }
        (folder / "override.yml").write_text(json.dumps(override))
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),
            "REDIS_IMAGE": "chatscale-redis:offline",
            "FRONT_PORT": str(self.ports["front"]),
            "WAHA_PORT": str(self.ports["waha"]),
            "CONFIG_VERSION": str(int(time.time())),
        }
        self.front = f"http://127.0.0.1:{self.ports['front']}"
        self.waha = f"http://127.0.0.1:{self.ports['waha']}"
        self.status = f"http://127.0.0.1:{self.ports['status']}"
        self.redis = f"redis://127.0.0.1:{self.ports['redis']}/0"

    def deploy(self) -> None:
        files = (
            "-c",
            str(self.folder / "docker-stack.yml"),
            "-c",
            str(self.folder / "override.yml"),
        )
        run("docker", "stack", "deploy", *files, STACK, env=self.env)
        wait_for(lambda: port_open(self.ports["status"]), 180, "the autoscaler's status page")

    def remove(self, client: docker.DockerClient) -> list[str]:
        """`docker stack rm`, as a user would; returns the services it left behind."""
        run("docker", "stack", "rm", STACK, check=False)
        deadline = time.monotonic() + 120
        left = [s.name for s in client.services.list()]
        while left and time.monotonic() < deadline:
            time.sleep(1)
            left = [s.name for s in client.services.list()]
        return left
