"""End to end with Docker: `docker-compose up` of the repository's compose file, real images,
real Chromium in the shard containers, the stand-in site in a container of its own.

Needs the images: scripts/build-images --with-services (.ci/run does it). The compose file is
used as shipped; an override only mounts a test config (4 sessions per shard, short windows),
publishes Redis on loopback for the test's registry checks, and picks free host ports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import docker
import pytest
from support.compose import COMPOSE, Compose, compose_system
from support.e2e import SITE, e2e_config, record_timings, start_site
from support.procs import port_open, wait_for
from support.scenario import MAX_SESSIONS, Scenario, System

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(COMPOSE))
def compose(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Compose]:
    with compose_system(tmp_path, request.param, e2e_config(ROOT)) as system:
        yield system


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
    # access_log /dev/stderr (config.yaml's compose setting): nginx's lines in the container log
    logs = compose.run("logs", "--no-color", "nginx").stdout
    assert '"uri":"/api/sessions/' in logs, logs[-2000:]

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
