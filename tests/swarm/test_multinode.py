"""Three Docker nodes on this machine (this engine as the manager, two dockerds in network
namespaces; see support/cluster.py), the stack deployed on them, real images and real Chromium:

- shards spread over the nodes; fronts on two different nodes each route every request to the
  shard that owns the session (checked against the registry);
- a worker node killed (power loss: its dockerd and every container on it) -> its shards come
  back on the other nodes and every session is WORKING again, with no new QR scan;
- the other worker drained for maintenance -> the same, and a client reading every session
  through a front meanwhile sees no failed request (it follows Retry-After, as documented).

Everything is undone afterwards, also on failure: services, swarm, dockerds, namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import docker
import pytest
from support.cluster import Cluster, Node, cluster, kill_node
from support.e2e import SITE, e2e_config, record_timings, start_site
from support.fleetcheck import all_live, headers, read_all_until_cancelled, tokens_now
from support.scenario import KEYS, SESSIONS, Scenario, System
from support.swarm import Stack, run

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("chatscale-shard:latest", "chatscale-autoscaler:latest", "chatscale-redis:offline")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Cluster, Stack]]:
    config = e2e_config(ROOT)
    swarm = config["runtime"]["swarm"]
    swarm["memory_reservation"] = "1g"
    swarm["preferences"] = ["spread=node.id"]
    with cluster(tmp_path, workers=2, images=IMAGES) as nodes:
        stack = Stack(ROOT, tmp_path, config)
        try:
            yield nodes, stack
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                nodes.manager.containers.get(SITE).remove(force=True)
            stack.remove(nodes.manager)


def progress(began: float, what: str) -> None:
    print(f"== {time.monotonic() - began:6.1f} s  {what}", flush=True)


@pytest.mark.timeout(1200)
async def test_three_nodes_spread_route_lose_a_node_and_drain_one(
    fleet: tuple[Cluster, Stack], artifacts_dir: Path
) -> None:
    nodes, stack = fleet
    started = time.monotonic()
    stack.deploy()
    site = start_site(nodes.manager, ROOT, published=True)
    progress(started, "stack deployed")
    port = stack.ports["front"]

    async def no_kill(shard_id: str) -> None:
        raise AssertionError("nodes, not shards, fail in this test")

    system = System(stack.front, stack.status, stack.redis, site, no_kill)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        scenario = Scenario(system, http, started)
        try:
            await scenario.first_shard()
            progress(started, "first shard ready")
            await scenario.create_all()
            progress(started, "all sessions placed")
            await scenario.log_in_all()
            progress(started, "all sessions WORKING")
            timings = scenario.report.timings

            placement = await shards_by_node(scenario)
            assert len(placement) >= 2, f"shards not spread over the nodes: {placement}"

            worker_fronts = {n.name: f"http://{n.addr}:{port}" for n in nodes.workers}
            misrouted = await routes_to_owners(scenario, http, worker_fronts["csnode2"])
            misrouted += await routes_to_owners(scenario, http, stack.front)
            assert misrouted == [], misrouted

            scans = len((await scenario.site_state())["sessions"])
            victim = await busiest_worker(scenario, nodes)
            moved = await sessions_on(scenario, {victim.node_id})
            tokens = await tokens_now(scenario)
            killed_at = time.monotonic()
            assert kill_node(victim) > 0
            progress(started, f"killed {victim.name}, which held {len(moved)} session(s)")
            await all_live(scenario, {victim.node_id}, moved, tokens, timeout=300)
            timings["node_killed_to_all_working"] = time.monotonic() - killed_at
            timings["node_killed_sessions"] = len(moved)
            progress(started, "every session WORKING again, on live shards")
            assert len((await scenario.site_state())["sessions"]) == scans, "a rescan was needed"

            other = next(n for n in nodes.workers if n is not victim)
            gone = {victim.node_id, other.node_id}
            moved = await sessions_on(scenario, {other.node_id})
            tokens = await tokens_now(scenario)
            failures: list[str] = []
            reader = asyncio.create_task(read_all_until_cancelled(scenario, http, failures))
            drained_at = time.monotonic()
            run("docker", "node", "update", "--availability", "drain", other.node_id)
            progress(started, f"draining {other.name}, which holds {len(moved)} session(s)")
            await all_live(scenario, gone, moved, tokens, timeout=300)
            timings["node_drained_to_all_working"] = time.monotonic() - drained_at
            timings["node_drained_sessions"] = len(moved)
            progress(started, "every session WORKING again, off the drained node")
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            assert failures == [], failures
            assert len((await scenario.site_state())["sessions"]) == scans, "a rescan was needed"
        finally:
            await scenario.redis.aclose()
    record_timings(artifacts_dir, "swarm-three-nodes", scenario.report)


async def shards_by_node(scenario: Scenario) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for shard in (await scenario.status())["shards"]:
        if shard["state"] == "ready" and shard["node"]:
            found.setdefault(shard["node"], []).append(shard["id"])
    return found


async def busiest_worker(scenario: Scenario, nodes: Cluster) -> Node:
    """The worker node holding the most sessions."""
    shard_node = {s["id"]: s["node"] for s in (await scenario.status())["shards"]}
    held: dict[str, int] = {}
    for sid in SESSIONS:
        owner = await scenario.redis.hget(KEYS.session(sid), "owner")
        node = shard_node.get(owner or "", "")
        held[node] = held.get(node, 0) + 1
    workers = sorted(nodes.workers, key=lambda n: held.get(n.node_id, 0), reverse=True)
    assert held.get(workers[0].node_id, 0) > 0, f"no worker holds a session: {held}"
    return workers[0]


async def routes_to_owners(
    scenario: Scenario, http: aiohttp.ClientSession, front: str
) -> list[str]:
    """GET every session through `front`: the answering shard must be the registry owner."""
    wrong = []
    for sid in SESSIONS:
        owner = await scenario.redis.hget(KEYS.session(sid), "owner")
        async with http.get(f"{front}/api/sessions/{sid}", headers=headers()) as resp:
            await resp.read()
            shard = resp.headers.get("X-Shard-Id", "")
            if resp.status != 200 or shard != owner:
                wrong.append(f"{front} {sid}: {resp.status} from {shard}, owner {owner}")
    return wrong


async def sessions_on(scenario: Scenario, node_ids: set[str]) -> set[str]:
    """The sessions whose owning shard runs on one of `node_ids`."""
    shard_node = {s["id"]: s["node"] for s in (await scenario.status())["shards"]}
    found = set()
    for sid in SESSIONS:
        owner = await scenario.redis.hget(KEYS.session(sid), "owner")
        if shard_node.get(owner or "") in node_ids:
            found.add(sid)
    return found
