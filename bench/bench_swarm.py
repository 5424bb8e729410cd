"""Benchmark chatscale on Docker Swarm. Each section sets up its own swarm on this machine and
leaves it again (tests/support/swarm.py and cluster.py do the work and the cleanup).

1. Reaction, one-node swarm, the stack deployed, real images: a full shard refuses a create ->
   the new shard's task running -> the shard routable (ready on the status page) -> the ring
   with it published (every front serves it). Next to it, in the same run: a bare
   `docker service create` of the same service spec, to its /health answering. Target: routable
   within 1.5x the bare start + boot.
2. A reconcile pass with 300 shard services on the swarm (their tasks pending: a constraint no
   node matches, so no container runs), the real Swarm runtime: pass time and Docker API calls.
3. Failover on three nodes (this engine + two dockerds in network namespaces), real Chromium and
   the stand-in site: one shard's container SIGKILLed (a crash) and one node killed outright,
   each -> every session it held WORKING again, without a rescan; side by side in one run.

Run:  .venv/bin/python bench/bench_swarm.py [--skip reaction,pass,cluster]
Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from support.cluster import cluster, kill_node  # noqa: E402
from support.e2e import SITE, e2e_config, start_site  # noqa: E402
from support.procs import free_port, http_ok, wait_for  # noqa: E402
from support.scenario import KEYS, SESSIONS, Scenario, System  # noqa: E402
from support.swarm import Stack, run, single_node_swarm  # noqa: E402

from autoscaler.runtimes.swarm import SwarmRuntime, service_spec  # noqa: E402
from chatscale_contract.config import Config  # noqa: E402

IMAGES = ("chatscale-shard:latest", "chatscale-autoscaler:latest", "chatscale-redis:offline")
KEY = "e2e-key"


# --- 1. reaction ------------------------------------------------------------------------------


def reaction(repeat: int) -> list[str]:
    """Each round on a swarm of its own; medians of the rounds, and every round's ratio."""
    rounds = [_reaction_round() for _ in range(repeat)]
    names = [name for name, _ in rounds[0]]
    medians = {n: statistics.median(dict(r)[n] for r in rounds) for n in names}
    ratios = [dict(r)["routable"] / dict(r)["bare"] for r in rounds]
    labels = {
        "running": "refused create -> shard-2's task running",
        "routable": "refused create -> shard-2 routable (fresh heartbeat, running)",
        "ring": "refused create -> ring with shard-2 published (every front serves it)",
        "bare_running": "bare `docker service create` of the same spec -> task running",
        "bare": "bare `docker service create` + shard boot to /health",
    }
    each = ", ".join(f"{r:.2f}x" for r in ratios)
    return [
        f"| step (median of {repeat} rounds, each on a fresh swarm) | time |",
        "|---|---|",
        *(f"| {labels[n]} | {medians[n]:.2f} s |" for n in names),
        f"| routable / bare | {statistics.median(ratios):.2f}x (rounds: {each}; target <= 1.5x) |",
    ]


def _reaction_round() -> list[tuple[str, float]]:
    config = e2e_config(ROOT)
    config["shard"]["max_sessions"] = 1
    config["policy"].update({"buffer": {"slots": 0, "percent": 0}, "min_shards": 1})
    config["reconcile"]["interval"] = 30  # only the refused create's nudge can start shard-2
    config["runtime"]["swarm"]["memory_reservation"] = "1g"
    with single_node_swarm() as client:
        folder = Path(tempfile.mkdtemp(prefix="bench-swarm-"))
        stack = Stack(ROOT, folder, config)
        try:
            stack.deploy()
            wait_for(lambda: _ready(stack.status) >= 1, 180, "shard-1 ready")
            wait_for(lambda: _ring(stack) == ["shard-1"], 120, "the ring with shard-1")
            time.sleep(3)
            assert _put(stack.front, "s1") == 201, "shard-1 takes its one session"
            assert _put(stack.front, "s2") == 503, "a full fleet refuses (and nudges)"
            began = time.monotonic()
            wait_for(lambda: _task_running(client, "chatscale-shard-2"), 120, "shard-2 task")
            running = time.monotonic() - began
            wait_for(lambda: _ready(stack.status) >= 2, 120, "shard-2 ready", interval=0.05)
            routable = time.monotonic() - began
            wait_for(lambda: "shard-2" in _ring(stack), 120, "ring with shard-2", interval=0.05)
            ring = time.monotonic() - began
            bare, bare_running = _bare_service(client, Config.model_validate(config))
        finally:
            stack.remove(client)
    return [
        ("running", running),
        ("routable", routable),
        ("ring", ring),
        ("bare_running", bare_running),
        ("bare", bare),
    ]


def _bare_service(client: Any, config: Config) -> tuple[float, float]:
    spec = service_spec(config, "shard-9")
    spec["name"] = "bench-bare"
    spec["labels"] = {}
    port = free_port()
    # Host mode: the test reaches the task's /health on this machine's port.
    spec["endpoint_spec"] = {
        "Mode": "dnsrr",
        "Ports": [{"TargetPort": 8000, "PublishedPort": port, "PublishMode": "host"}],
    }
    began = time.monotonic()
    service = client.api.create_service(**spec)
    try:
        wait_for(lambda: _task_running(client, "bench-bare"), 120, "bare task", interval=0.05)
        running = time.monotonic() - began
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{port}/health"),
            120,
            "bare shard /health",
            interval=0.05,
        )
        return time.monotonic() - began, running
    finally:
        client.api.remove_service(service["ID"])


def _task_running(client: Any, name: str) -> bool:
    tasks = client.api.tasks(filters={"service": name, "desired-state": "running"})
    return any(t["Status"]["State"] in ("starting", "running") for t in tasks)


def _ready(status: str) -> int:
    try:
        with urllib.request.urlopen(f"{status}/api/status", timeout=2) as resp:
            shards = json.load(resp)["shards"]
    except (OSError, ValueError):
        return 0
    return sum(1 for s in shards if s["state"] == "ready")


def _ring(stack: Stack) -> list[str]:
    import redis

    client = redis.Redis.from_url(stack.redis, decode_responses=True)
    try:
        raw = client.get(KEYS.ring)
    finally:
        client.close()
    return [m["id"] for m in json.loads(raw)["shards"]] if raw else []


def _put(front: str, sid: str) -> int:
    body = {
        "driver": "web",
        "options": {
            "url": "http://127.0.0.1:8000/health",
            "qr_selector": "#q",
            "ready_selector": "#r",
        },
    }
    request = urllib.request.Request(
        f"{front}/api/sessions/{sid}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"X-Api-Key": KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# --- 2. a pass over 300 services --------------------------------------------------------------


def big_pass(count: int = 300, passes: int = 10) -> list[str]:
    from support.procs import start_redis, stop

    from autoscaler.loop.daemon import Daemon

    with single_node_swarm() as client:
        run("docker", "network", "create", "--driver", "overlay", "--attachable", "benchnet")
        folder = Path(tempfile.mkdtemp(prefix="bench-pass-"))
        redis_proc, base = start_redis(folder)
        config = Config.model_validate(
            {
                "redis": {"url": f"{base}/0"},
                "shard": {"network": "benchnet", "image": "chatscale-base:bookworm"},
                "runtime": {
                    "kind": "swarm",
                    "project": "benchpass",
                    # No node matches: every task stays pending, no container runs.
                    "swarm": {"constraints": ["node.labels.nowhere == true"]},
                },
                "policy": {"min_shards": 1, "max_shards": 1000, "dry_run": True},
                "nginx": {"enabled": False},
            }
        )
        api: Any = client.api  # the SDK's low-level client is untyped
        try:
            began = time.monotonic()
            for n in range(1, count + 1):
                api.create_service(**service_spec(config, f"shard-{n}"))
            created = time.monotonic() - began
            samples, calls = asyncio.run(_passes(config, Daemon, passes))
        finally:
            stop(redis_proc)
    p50 = statistics.median(samples) * 1000
    return [
        f"{count} shard services created in {created:.0f} s (tasks pending, no containers).",
        "",
        "| services | pass p50 | pass max | Docker API calls per pass |",
        "|---|---|---|---|",
        f"| {count} | {p50:.0f} ms | {max(samples) * 1000:.0f} ms | {calls:g} |",
    ]


async def _passes(config: Config, daemon_class: Any, passes: int) -> tuple[list[float], float]:
    runtime = SwarmRuntime(config)
    samples = []
    async with daemon_class(config, runtime=runtime, holder="bench") as daemon:
        await daemon.reconcile()  # warm up connections and caches
        calls_before = runtime.calls
        for _ in range(passes):
            began = time.perf_counter()
            decision = await daemon.reconcile()
            samples.append(time.perf_counter() - began)
            assert decision is not None, daemon.state.last_error
    return samples, (runtime.calls - calls_before) / passes


# --- 3. failover on three nodes ---------------------------------------------------------------


def failover() -> list[str]:
    config = e2e_config(ROOT)
    config["runtime"]["swarm"].update(memory_reservation="1g", preferences=["spread=node.id"])
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    with cluster(folder, workers=2, images=IMAGES) as nodes:
        stack = Stack(ROOT, folder, config)
        try:
            stack.deploy()
            site = start_site(nodes.manager, ROOT, published=True)
            return asyncio.run(_failover(nodes, stack, site))
        finally:
            with contextlib.suppress(Exception):  # the site may not have started
                nodes.manager.containers.get(SITE).remove(force=True)
            stack.remove(nodes.manager)


async def _failover(nodes: Any, stack: Stack, site: str) -> list[str]:
    async def kill_shard(shard_id: str) -> None:
        raise AssertionError("unused")

    system = System(stack.front, stack.status, stack.redis, site, kill_shard)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        scenario = Scenario(system, http, time.monotonic())
        try:
            await scenario.first_shard()
            await scenario.create_all()
            await scenario.log_in_all()
            crash = await _crash_one_shard(scenario, nodes)
            loss = await _lose_a_node(scenario, nodes)
        finally:
            await scenario.redis.aclose()
    rows = [
        ("one shard's container SIGKILLed (Swarm restarts it)", crash),
        ("one node killed (dockerd, shims, containers)", loss),
    ]
    return [
        "| fault | sessions it held | -> all of them WORKING again | rescans |",
        "|---|---|---|---|",
        *(f"| {what} | {held} | {seconds:.1f} s | 0 |" for what, (held, seconds) in rows),
    ]


async def _owners(scenario: Scenario) -> dict[str, str]:
    return {sid: await scenario.redis.hget(KEYS.session(sid), "owner") or "" for sid in SESSIONS}


async def _back(scenario: Scenario, moved: list[str], tokens: dict[str, int]) -> float:
    began = time.monotonic()

    async def working() -> bool:
        for sid in moved:
            code, view, shard = await scenario.call("GET", f"/api/sessions/{sid}")
            owner = await scenario.redis.hget(KEYS.session(sid), "owner")
            if code != 200 or view.get("status") != "WORKING" or shard != owner:
                return False
            if int(view.get("token", 0)) <= tokens[sid]:
                return False
        return True

    scans = len((await scenario.site_state())["sessions"])
    await scenario.until(working, 300, "sessions WORKING again")
    assert len((await scenario.site_state())["sessions"]) == scans, "a rescan was needed"
    return time.monotonic() - began


async def _tokens(scenario: Scenario) -> dict[str, int]:
    return {s: int(await scenario.redis.hget(KEYS.session(s), "token") or 0) for s in SESSIONS}


async def _crash_one_shard(scenario: Scenario, nodes: Any) -> tuple[int, float]:
    owners = await _owners(scenario)
    victim = max(set(owners.values()), key=list(owners.values()).count)
    moved = [s for s, o in owners.items() if o == victim]
    tokens = await _tokens(scenario)
    shard_node = {s["id"]: s["node"] for s in (await scenario.status())["shards"]}
    node = next((n for n in nodes.workers if n.node_id == shard_node[victim]), None)
    client = node.client() if node else nodes.manager
    (container,) = client.containers.list(
        filters={"label": f"com.docker.swarm.service.name=chatscale-{victim}"}
    )
    container.kill(signal="SIGKILL")
    return len(moved), await _back(scenario, moved, tokens)


async def _lose_a_node(scenario: Scenario, nodes: Any) -> tuple[int, float]:
    owners = await _owners(scenario)
    shard_node = {s["id"]: s["node"] for s in (await scenario.status())["shards"]}
    held = {n.node_id: [s for s, o in owners.items() if shard_node.get(o) == n.node_id]
            for n in nodes.workers}  # fmt: skip
    victim = max(nodes.workers, key=lambda n: len(held[n.node_id]))
    moved = held[victim.node_id]
    assert moved, f"no worker holds a session: {held}"
    tokens = await _tokens(scenario)
    kill_node(victim)
    return len(moved), await _back(scenario, moved, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip", default="", help="comma-separated: reaction,pass,cluster")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the reaction section")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print("command: `.venv/bin/python bench/bench_swarm.py`  ")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(
        f"machine: {os.cpu_count()} CPU, {platform.machine()}, Python {platform.python_version()}\n"
    )
    if "reaction" not in skip:
        print("### Reaction on a one-node swarm\n")
        print("\n".join(reaction(args.repeat)) + "\n", flush=True)
    if "pass" not in skip:
        print("### A reconcile pass with 300 shard services\n")
        print("\n".join(big_pass()) + "\n", flush=True)
    if "cluster" not in skip:
        print("### Failover on three nodes\n")
        print("\n".join(failover()) + "\n", flush=True)


if __name__ == "__main__":
    main()
