"""End to end with Docker: `docker-compose up` of the repository's compose file, real images,
real Chromium in the shard containers, the stand-in site in a container of its own.

Needs the images: scripts/build-images --with-services (.ci/run does it). The compose file is
used as shipped; an override only mounts a test config (4 sessions per shard, short windows),
publishes Redis on loopback for the test's registry checks, and picks free host ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import docker
import pytest
import yaml
from support.e2e import SITE, e2e_config, record_timings, start_site
from support.procs import free_port, port_open, wait_for
from support.scenario import MAX_SESSIONS, Scenario, System

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = {
    "v1": [shutil.which("docker-compose") or "docker-compose"],  # Debian's 1.29
    "v2": ["docker", "compose"],  # the plugin scripts/setup-test-env installs
}
IMAGES = (
    "chatscale-shard:latest",
    "chatscale-autoscaler:latest",
    "chatscale-redis:offline",
)


class Compose:
    """Compose (v1 or v2) for the repository's compose file plus a test override."""

    def __init__(self, tmp_path: Path, version: str):
        self.folder = tmp_path
        self.version = version
        self.ports = {"front": free_port(), "status": free_port(), "redis": free_port()}
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(e2e_config(ROOT)))
        override = {
            "services": {
                "redis": {"ports": [f"127.0.0.1:{self.ports['redis']}:6379"]},
                "autoscaler": {"volumes": [f"{config_path}:/etc/chatscale/config.yaml:ro"]},
                "nginx": {"volumes": [f"{config_path}:/etc/chatscale/config.yaml:ro"]},
            }
        }
        (tmp_path / "override.yml").write_text(json.dumps(override))
        self.env = {
            **os.environ,
            "REDIS_IMAGE": "chatscale-redis:offline",
            "FRONT_PORT": str(self.ports["front"]),
            "STATUS_PORT": str(self.ports["status"]),
            "COMPOSE_PROJECT_NAME": "chatscale",
        }
        self.argv = [
            *COMPOSE[version],
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(tmp_path / "override.yml"),
        ]
        self.front = f"http://127.0.0.1:{self.ports['front']}"
        self.status = f"http://127.0.0.1:{self.ports['status']}"
        self.redis = f"redis://127.0.0.1:{self.ports['redis']}/0"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args], cwd=ROOT, env=self.env, check=check, capture_output=True, text=True
        )

    def down(self) -> None:
        logs = self.run("logs", "--no-color", "autoscaler", check=False)
        (self.folder / "autoscaler.log").write_text(logs.stdout + logs.stderr)
        self.run("down", "--remove-orphans", "-v", "-t", "30", check=False)


@pytest.fixture(params=sorted(COMPOSE))
def compose(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Compose]:
    client = docker.from_env()
    missing = [i for i in IMAGES if not client.images.list(name=i)]
    if missing:
        raise RuntimeError(f"images missing: {missing}; run scripts/build-images --with-services")
    leftovers = client.containers.list(all=True, filters={"label": "chatscale.project=chatscale"})
    assert not leftovers, f"a chatscale fleet already runs here: {[c.name for c in leftovers]}"
    system = Compose(tmp_path, request.param)
    try:
        yield system
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.containers.get(SITE).remove(force=True)
        system.down()
        client.close()


async def test_compose_end_to_end(compose: Compose, artifacts_dir: Path) -> None:
    client = docker.from_env()
    started = time.monotonic()
    compose.run("up", "-d", "--no-build")
    wait_for(lambda: port_open(compose.ports["status"]), 120, "the status page")
    site = start_site(client, ROOT)

    async def kill(shard_id: str) -> None:
        client.containers.get(f"chatscale-{shard_id}").kill(signal="SIGKILL")

    system = System(compose.front, compose.status, compose.redis, site, kill)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        report = await Scenario(system, http, started).run()
    record_timings(artifacts_dir, f"docker-compose-{compose.version}", report)
    assert report.max_seen <= MAX_SESSIONS, "a shard held more than max_sessions"
    assert report.peak_shards >= 3
    assert report.misrouted == [], report.misrouted

    client.containers.get(SITE).remove(force=True)
    compose.down()
    left = [
        c.name for c in client.containers.list(all=True) if (c.name or "").startswith("chatscale-")
    ]
    assert left == [], f"compose {compose.version} down left containers: {left}"
    # (Docker's name filter matches prefixes too: compare names exactly.)
    networks = [n.name for n in client.networks.list() if n.name == "chatscale"]
    assert networks == [], "the chatscale network is left"
    client.close()
