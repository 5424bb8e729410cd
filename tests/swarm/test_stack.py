"""End to end on Docker Swarm: `docker stack deploy` of the repository's stack file on a one-node
swarm (this machine's own engine), real images, real Chromium in shard *services*, the same
scenario as the compose test: scale out through new services, a shard's task killed and its
sessions WORKING again under the same id without a rescan, scale in, nothing misrouted; and
`docker stack rm` leaves nothing behind. The swarm is left again afterwards, also on failure.

A three-node cluster (dockerd per network namespace) is scripts/swarm-cluster-test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import docker
import pytest
from support.e2e import SITE, e2e_config, record_timings, start_site
from support.scenario import MAX_SESSIONS, Scenario, System
from support.swarm import Stack, single_node_swarm

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, docker.DockerClient]]:
    config = e2e_config(ROOT)
    # Five shards must fit on this one machine: each reserves 1 GiB (its limit stays 10 GiB).
    config["runtime"]["swarm"]["memory_reservation"] = "1g"
    with single_node_swarm() as client:
        deployed = Stack(ROOT, tmp_path, config)
        try:
            yield deployed, client
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                client.containers.get(SITE).remove(force=True)
            deployed.remove(client)


async def test_stack_end_to_end(
    stack: tuple[Stack, docker.DockerClient], artifacts_dir: Path
) -> None:
    deployed, client = stack
    import time

    started = time.monotonic()
    deployed.deploy()
    site = start_site(client, ROOT, published=True)

    async def kill(shard_id: str) -> None:
        """SIGKILL the shard's task container, as a crash would."""
        (container,) = client.containers.list(
            filters={"label": f"com.docker.swarm.service.name=chatscale-{shard_id}"}
        )
        container.kill(signal="SIGKILL")

    system = System(deployed.front, deployed.status, deployed.redis, site, kill)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        report = await Scenario(system, http, started).run()
    record_timings(artifacts_dir, "swarm-stack", report)
    assert report.max_seen <= MAX_SESSIONS, "a shard held more than max_sessions"
    assert report.peak_shards >= 3
    assert report.misrouted == [], report.misrouted

    client.containers.get(SITE).remove(force=True)
    left = deployed.remove(client)
    assert left == [], f"docker stack rm left services: {left}"
