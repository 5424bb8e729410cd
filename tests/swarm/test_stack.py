"""End to end on Docker Swarm: `docker stack deploy` of the repository's stack file on a one-node
swarm (this machine's own engine), real images, real Chromium in shard *services*, the same
scenario as the compose test: scale out through new services, a shard's task killed and its
sessions WORKING again under the same id without a rescan, then a rolling update (a new shard
image under the same tag, `policy.recycle.outdated`: every shard service replaced by one made
from it, every session moved from its snapshot, no rescan, and a client reading every session
through the front all along sees no failed request), scale in, nothing misrouted; a broken image
under the tag then holds the rollout with the old shard serving; and `docker stack rm` leaves
nothing behind. The swarm is left again afterwards, also on failure, and the
shard image's tag put back.

A three-node cluster (dockerd per network namespace) is scripts/swarm-cluster-test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from support.e2e import SITE, e2e_config, rebuild_shard_image, record_timings, start_site
from support.fleetcheck import all_live, read_all_until_cancelled, tokens_now
from support.scenario import MAX_SESSIONS, SESSIONS, Scenario, System
from support.swarm import Stack, single_node_swarm

from autoscaler.runtimes.base import LABEL_IMAGE, LABEL_PROJECT, LABEL_SHARD

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SHARD_IMAGE = "chatscale-shard:latest"
PROJECT = e2e_config(ROOT)["runtime"]["project"]
"""The project label of the stack's shard services (runtime.project in the test config)."""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, docker.DockerClient]]:
    config = e2e_config(ROOT)
    # Five shards must fit on this one machine: each reserves 1 GiB (its limit stays 10 GiB).
    config["runtime"]["swarm"]["memory_reservation"] = "1g"
    config["policy"]["recycle"] = {"outdated": True}
    with single_node_swarm() as client:
        deployed = Stack(ROOT, tmp_path, config)
        original = str(client.images.get(SHARD_IMAGE).id)
        try:
            yield deployed, client
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                client.containers.get(SITE).remove(force=True)
            deployed.remove(client)
            client.images.get(original).tag(SHARD_IMAGE)
            _remove_rollout_images(client, original)


async def test_stack_end_to_end(
    stack: tuple[Stack, docker.DockerClient], artifacts_dir: Path
) -> None:
    deployed, client = stack
    started = time.monotonic()
    deployed.deploy()
    site = start_site(client, ROOT, published=True)

    async def kill(shard_id: str) -> None:
        """SIGKILL the shard's task container, as a crash would."""
        (container,) = client.containers.list(
            filters={"label": f"com.docker.swarm.service.name=chatscale-{shard_id}"}
        )
        container.kill(signal="SIGKILL")

    async def rollout(scenario: Scenario) -> None:
        await rolled_out_without_failures(scenario, client)

    async def broken(scenario: Scenario) -> None:
        await broken_image_holds_the_rollout(scenario, client)

    system = System(deployed.front, deployed.status, deployed.redis, site, kill)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        scenario = Scenario(system, http, started, after_failover=rollout, at_end=broken)
        report = await scenario.run()
    record_timings(artifacts_dir, "swarm-stack", report)
    assert report.max_seen <= MAX_SESSIONS, "a shard held more than max_sessions"
    assert report.peak_shards >= 3
    assert report.misrouted == [], report.misrouted

    client.containers.get(SITE).remove(force=True)
    left = deployed.remove(client)
    assert left == [], f"docker stack rm left services: {left}"


async def rolled_out_without_failures(scenario: Scenario, client: docker.DockerClient) -> None:
    """A new shard image under the same tag: every shard service is replaced by one made from it
    (its label names the new image), every session WORKING on a ready shard and moved from its
    snapshot (its fencing token grew), no rescan; a reader following Retry-After saw no failure."""
    scans = len((await scenario.site_state())["sessions"])
    tokens = await tokens_now(scenario)
    failures: list[str] = []
    reader = asyncio.create_task(read_all_until_cancelled(scenario, scenario.http, failures))
    began = time.monotonic()
    try:
        new = await asyncio.to_thread(rebuild_shard_image, client, SHARD_IMAGE)

        async def replaced() -> bool:
            services = await asyncio.to_thread(_shard_services, client)
            made_from = [s.attrs["Spec"]["Labels"].get(LABEL_IMAGE) for s in services]
            shards = (await scenario.status())["shards"]
            settled = all(s["state"] == "ready" and not s["outdated"] for s in shards)
            return bool(made_from) and set(made_from) == {new} and settled

        await scenario.until(replaced, 480, "every shard service made from the new image")
        await all_live(scenario, set(), set(SESSIONS), tokens, timeout=120)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    scenario.report.timings["rollout_new_image_to_all_replaced"] = time.monotonic() - began
    assert failures == [], failures
    assert len((await scenario.site_state())["sessions"]) == scans, "a rescan during the rollout"
    drains = [e for e in (await scenario.status())["events"] if e["kind"] == "drain"]
    assert any("older image" in e["reason"] for e in drains), drains


async def broken_image_holds_the_rollout(scenario: Scenario, client: docker.DockerClient) -> None:
    """A build whose shard exits at once under the tag: the extra shard (Swarm restarts its task
    again and again) never comes up, so the rollout is held and the old shard keeps serving."""
    before = {s.id for s in await asyncio.to_thread(_shard_services, client)}
    assert before, "no shard service left to hold"
    built_at = time.time()  # the autoscaler's events carry wall-clock times
    await asyncio.to_thread(
        rebuild_shard_image, client, SHARD_IMAGE, 'ENTRYPOINT ["sh", "-c", "exit 3"]'
    )
    held_since = 0.0
    deadline = time.monotonic() + 120
    while not held_since or time.monotonic() < held_since + 15:
        assert time.monotonic() < deadline, "the rollout was never held"
        status = await scenario.status()
        waiting = status["rollout"]["waiting"]
        if not held_since and any(w.startswith("rollout held") for w in waiting):
            held_since = time.monotonic()
        now = {s.id for s in await asyncio.to_thread(_shard_services, client)}
        assert before <= now, "an old shard service was removed"
        ready = {s["id"] for s in status["shards"] if s["state"] == "ready"}
        assert len(ready) >= len(before), status["shards"]
        code, listing, _ = await scenario.call("GET", "/api/sessions")
        assert code == 200, listing
        await asyncio.sleep(1)
    drains = [e for e in (await scenario.status())["events"] if e["kind"] == "drain"]
    assert not [e for e in drains if e["ts"] >= built_at], "an old shard was drained"


def _remove_rollout_images(client: docker.DockerClient, keep: str) -> None:
    """The test's builds; a task container of the stack may still be going away: a few tries."""
    for _ in range(10):
        left = [
            str(i.id)
            for i in client.images.list(filters={"label": "chatscale.test.rollout"})
            if i.id != keep
        ]
        for image in left:
            with contextlib.suppress(docker.errors.DockerException):
                client.images.remove(image, force=True)
        if not left:
            return
        time.sleep(1)


def _shard_services(client: docker.DockerClient) -> list[Any]:
    return [
        s
        for s in client.services.list(filters={"label": LABEL_SHARD})
        if s.attrs["Spec"]["Labels"].get(LABEL_PROJECT) == PROJECT
    ]
