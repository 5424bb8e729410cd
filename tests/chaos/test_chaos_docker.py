"""Chaos with Docker: `docker compose up` of the repository's compose file (real images, real
Chromium in the shard containers) on a Docker engine of the test's own (support/ownengine.py),
under the load and audit of the local chaos test (support/chaos.py):

- a page grows past its shard's memory limit: the kernel's OOM killer kills inside the shard's
  cgroup (seen as Docker's `oom` event); the session comes back without a new scan, whether the
  shard reopened it in place or a replacement shard restored it;
- the Docker daemon SIGKILLed and started again: it stops every container it finds running as
  it starts; Redis (from its AOF), nginx and the autoscaler come back by their restart policy,
  the autoscaler replaces the dead shards and every session is restored without a new scan;
- a new shard image under the same tag (what `docker compose build` or a pull does), with
  `policy.recycle.outdated` on: every shard container is replaced by one of the new image, an
  extra shard first and one drain at a time, with no new scan and (almost) no failed call: the
  shards hold requests while a session moves, and nginx's backups take a stopped shard's.

The stand-in site runs on the host, on the compose network's gateway address, so its logins
outlive the engine's restart as WhatsApp's servers would.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.chaos import Chaos, Load, beating_shards, load_client, record
from support.compose import IMAGES, Compose, compose_system
from support.e2e import e2e_config, rebuild_shard_image
from support.ownengine import BRIDGE, Engine, own_engine
from support.procs import free_port, http_ok, port_open, start, stop, wait_for
from support.scenario import API_KEY
from support.shards import Api, log_in, site_state

from autoscaler.runtimes.base import LABEL_SHARD
from chatscale_contract.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keys("cs:")
CAPACITY = 2
SESSIONS = ["chaos-w", "chaos-x", "chaos-y", "chaos-z"]
PHONES = {sid: f"49151000010{n}" for n, sid in enumerate(SESSIONS)}
SHARD_IMAGE = IMAGES[0]
ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "1"))
"""As in test_chaos_local.py."""
pytestmark = [
    pytest.mark.docker,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(300 + 300 * ROUNDS),
]
GATEWAY = "10.98.7.1"
NETWORK = {
    "chatscale": {
        "driver_opts": {"com.docker.network.bridge.name": BRIDGE},
        "ipam": {"config": [{"subnet": "10.98.7.0/24", "gateway": GATEWAY}]},
    }
}


def config(site: str) -> dict[str, Any]:
    settings = e2e_config(ROOT)
    settings["shard"].update(max_sessions=CAPACITY, memory_limit="1g")
    settings["shard"]["env"]["WHATSAPP_URL"] = site
    settings["policy"].update(min_shards=2, max_shards=5)  # room for a rollout's extra shard
    settings["policy"]["scale_down"]["stabilization"] = 600
    settings["policy"]["recycle"] = {"outdated": True}  # nothing is outdated until the rollout
    return settings


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with own_engine(tmp_path, IMAGES) as found:
        yield found


async def test_the_fleet_keeps_its_invariants_through_an_oom_kill_and_a_dockerd_crash(
    engine: Engine, tmp_path: Path, artifacts_dir: Path
) -> None:
    port = free_port()
    site = f"http://{GATEWAY}:{port}"
    with compose_system(
        tmp_path, "v2", config(site), engine.socket_path, {"networks": NETWORK}
    ) as compose:
        compose.run("up", "-d", "--no-build")
        argv = [sys.executable, "-m", "fakesite", "--host", GATEWAY, "--port", str(port)]
        env = {"PYTHONPATH": str(ROOT / "tests")}
        site_proc = start([*argv, "--qr-rotate-seconds", "120"], tmp_path / "fakesite.log", env)
        redis = aioredis.Redis.from_url(compose.redis, decode_responses=True, socket_timeout=5)
        try:
            wait_for(lambda: port_open(port, GATEWAY), 30, "the stand-in site")
            async with load_client() as http:
                chaos = await _prepared(http, redis, engine, compose, site)
                await _run_faults(chaos, engine, redis, site)
        finally:
            await redis.aclose()
            stop(site_proc)
    record(artifacts_dir, "docker", chaos.outcomes)
    assert chaos.watch.violations == [], chaos.watch.violations
    for outcome in chaos.outcomes:
        assert outcome.problems == [], f"{outcome.fault}: {outcome.problems}"
    assert len(chaos.load.accepted) > 20, "the load hardly sent anything"


async def _prepared(
    http: aiohttp.ClientSession, redis: aioredis.Redis, engine: Engine, compose: Compose, site: str
) -> Chaos:
    # (An open port says little here: Docker's userland proxy takes connections at once.)
    wait_for(lambda: http_ok(f"{compose.front}/__chatscale/config"), 120, "the front serving")
    api = Api(http, compose.front, API_KEY)
    for sid in SESSIONS:
        await log_in(api, http, site, sid, PHONES[sid], created=(201, 503))
    for sid in SESSIONS:  # a 503 (no room yet) is a create a client repeats
        await api.wait_status(sid, "WORKING", timeout=120)

    async def shards() -> dict[str, str]:
        return await beating_shards(redis, lambda addr: _address(engine, addr))

    async def orphans() -> list[str]:
        known = set(await redis.zrange(KEYS.shards, 0, -1))
        with engine.client() as client:
            found = client.containers.list(all=True, filters={"label": LABEL_SHARD})
        ids = [c.labels[LABEL_SHARD] for c in found]
        return [f"container of {s}" for s in ids if s not in known or ids.count(s) > 1]

    load = Load(http, compose.front, SESSIONS)
    return Chaos(http, compose.front, redis, site, shards, orphans, CAPACITY, load)


def _address(engine: Engine, addr: str) -> str:
    """A shard's heartbeat address (container name:port) as the host reaches it."""
    name, port = addr.rsplit(":", 1)
    with engine.client() as client:
        networks = client.containers.get(name).attrs["NetworkSettings"]["Networks"]
    return f"http://{networks['chatscale']['IPAddress']}:{port}"


async def _run_faults(chaos: Chaos, engine: Engine, redis: aioredis.Redis, site: str) -> None:
    async with chaos.watching():
        for _ in range(ROUNDS):
            await _one_round(chaos, engine, redis, site)


async def _one_round(chaos: Chaos, engine: Engine, redis: aioredis.Redis, site: str) -> None:
    container = ""

    async def page_grows_past_the_limit() -> None:
        nonlocal container
        owner = await redis.hget(KEYS.session(SESSIONS[0]), "owner")
        container = _container_id(engine, f"chatscale-{owner}")
        before = _oom_kills(engine, container) or 0
        # The page grows 512 MB at a time until the kernel kills inside the shard's cgroup
        # (how much that takes depends on what else the shard holds).
        for _ in range(8):
            body = {"phone": PHONES[SESSIONS[0]], "mb": 512}
            async with chaos.http.post(f"{site}/api/grow", json=body) as resp:
                assert resp.status == 200, await resp.text()
            for _ in range(20):
                await asyncio.sleep(0.5)
                kills = _oom_kills(engine, container)
                if kills is None or kills > before:
                    return
        raise AssertionError(f"no OOM kill in {owner}'s container after 4 GB of growth")

    outcome = await chaos.fault(
        "a page grows past its shard's memory limit (OOM kill)", page_grows_past_the_limit
    )
    owner = await redis.hget(KEYS.session(SESSIONS[0]), "owner")
    survived = _container_id(engine, f"chatscale-{owner}") == container
    outcome.notes.append(
        "the shard survived and reopened the page" if survived else "the shard was replaced"
    )

    async def dockerd_crashed() -> None:
        await asyncio.to_thread(engine.kill)
        await asyncio.sleep(2)
        await asyncio.to_thread(engine.start)

    await chaos.fault("the Docker daemon SIGKILLed and started again", dockerd_crashed, 300)

    scans = await _scans(chaos)

    async def new_image_rolled_out() -> None:
        new = await asyncio.to_thread(_rebuild, engine)
        await asyncio.to_thread(_until_rolled_out, engine, new)

    outcome = await chaos.fault("a new shard image rolled out", new_image_rolled_out, 400)
    assert await _scans(chaos) == scans, "a new scan during the rollout"
    # Held requests (shard/handoff.py), nginx's backups (nginx.conf.j2), and drained shards
    # stopped only once the fronts no longer route to them: nothing fails.
    assert outcome.failed == {}, outcome.notes


async def _scans(chaos: Chaos) -> int:
    """Logins the stand-in site has seen (each one a QR scan)."""
    return len((await site_state(chaos.http, chaos.site))["sessions"])


def _rebuild(engine: Engine) -> str:
    with engine.client() as client:
        return rebuild_shard_image(client, SHARD_IMAGE)


def _until_rolled_out(engine: Engine, image: str) -> None:
    """Until every shard container runs `image` (the old ones drained and removed)."""

    def done() -> bool:
        with engine.client() as client:
            found = client.containers.list(all=True, filters={"label": LABEL_SHARD})
            return len(found) >= 2 and all(
                c.attrs["Image"] == image and c.status == "running" for c in found
            )

    wait_for(done, 360, "every shard container on the new image", interval=1)


def _container_id(engine: Engine, name: str) -> str:
    with engine.client() as client:
        return str(client.containers.get(name).id)


def _oom_kills(engine: Engine, container: str) -> int | None:
    """How many processes the kernel's OOM killer killed in `container`'s memory cgroup (its
    own counter: cgroup v1 memory.oom_control, v2 memory.events); None once it is not running
    (the kill took the shard itself)."""
    with engine.client() as client:
        pid = client.containers.get(container).attrs["State"]["Pid"]
    if not pid:
        return None
    groups = dict(
        line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().split()
    )
    v1 = next((path for names, path in groups.items() if "memory" in names.split(",")), None)
    if v1 is not None:
        counters = Path(f"/sys/fs/cgroup/memory{v1}/memory.oom_control")
    else:
        counters = Path(f"/sys/fs/cgroup{groups['']}/memory.events")
    fields = dict(line.split() for line in counters.read_text().splitlines())
    return int(fields["oom_kill"])
