"""Benchmark the autoscaler daemon.

1. One reconcile pass with 100 and 1,000 simulated shards: heartbeats and session sets in a real
   Redis, a runtime that only lists (targets: under 50 ms and 300 ms).
2. Reaction to a shard reporting full, on a real Docker engine with the real shard image: from the
   nudge to the new shard's container running, and to it being routable (heartbeat fresh and in
   the routing table), next to a bare `docker run` of the same image with the same arguments and
   its boot to /health (target: routable within 1.5x bare start + boot).

Run:  .venv/bin/python bench/bench_daemon.py [--skip-docker]
Prints markdown for docs/benchmarks.md. Starts its own redis-server(s); cleans up on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.procs import free_port, http_ok, start, start_redis, stop, wait_for

from autoscaler.loop.daemon import Daemon
from autoscaler.runtimes.base import ShardInstance
from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.config import Config
from chatscale_contract.keys import Keys

KEYS = Keys("cs:")


class ListOnlyRuntime:
    """Reports `count` running shards; never starts or stops anything."""

    def __init__(self, count: int):
        now = time.time()
        self.instances = [
            ShardInstance(f"shard-{n}", True, now - 600, f"10.0.{n // 250}.{n % 250}:8000")
            for n in range(1, count + 1)
        ]

    async def check(self) -> None:
        pass

    async def list_shards(self) -> list[ShardInstance]:
        return self.instances

    async def cluster(self) -> None:
        return None

    async def replace(self, shard_id: str, timeout: float) -> None:
        raise RuntimeError("list-only runtime")

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        return next((i for i in self.instances if i.shard_id == shard_id), None)

    async def start(self, shard_id: str) -> ShardInstance:
        raise RuntimeError("list-only runtime")

    async def stop(self, shard_id: str, timeout: float) -> None:
        raise RuntimeError("list-only runtime")

    async def signal(self, shard_id: str, signum: int) -> None:
        raise RuntimeError("list-only runtime")

    def reconfigure(self, config: Config) -> None:
        pass


def seed(client: redis.Redis, runtime: ListOnlyRuntime, per_shard: int) -> None:
    client.flushall()
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for instance in runtime.instances:
        sid = instance.shard_id
        beat = Beat(
            id=sid,
            addr=instance.addr,
            state=ReportedState.ACCEPTING,
            sessions=per_shard,
            capacity=50,
            memory_bytes=per_shard * 80 * 2**20,
            memory_limit_bytes=10 * 2**30,
            ts=now,
            boot="b",
            version="bench",
        )
        pipe.hset(KEYS.shard(sid), mapping=beat.fields())
        pipe.zadd(KEYS.shards, {sid: now})
        pipe.sadd(KEYS.shard_sessions(sid), *(f"{sid}-s{n}" for n in range(per_shard)))
    pipe.execute()


async def time_passes(redis_url: str, count: int, passes: int = 15) -> list[float]:
    client = redis.Redis.from_url(redis_url)
    runtime = ListOnlyRuntime(count)
    seed(client, runtime, per_shard=30)  # 30 of 50: the policy wants no change
    config = Config.model_validate(
        {
            "redis": {"url": redis_url},
            "policy": {"max_shards": 2000, "min_shards": 1},
            "nginx": {"enabled": False},
        }
    )
    samples = []
    async with Daemon(config, runtime=runtime, holder="bench") as daemon:
        for _ in range(passes + 2):
            began = time.perf_counter()
            decision = await daemon.reconcile()
            samples.append(time.perf_counter() - began)
            assert decision is not None and decision.plan.actions == (), decision
            now = time.time()  # keep the heartbeats fresh, as live shards would
            pipe = client.pipeline(transaction=False)
            for instance in runtime.instances:
                pipe.hset(KEYS.shard(instance.shard_id), "ts", repr(now))
            pipe.execute()
    client.close()
    return sorted(samples[2:])  # the first passes warm caches and connections


def pass_section(redis_url: str) -> list[str]:
    lines = ["| shards | sessions | pass p50 | pass p90 | target |", "|---|---|---|---|---|"]
    for count, target in ((100, "< 50 ms"), (1000, "< 300 ms")):
        samples = asyncio.run(time_passes(redis_url, count))
        p50 = statistics.median(samples) * 1000
        p90 = samples[int(len(samples) * 0.9) - 1] * 1000
        lines.append(f"| {count} | {count * 30:,} | {p50:.0f} ms | {p90:.0f} ms | {target} |")
    return lines


# --- reaction on Docker --------------------------------------------------------------------


def docker_section(folder: Path) -> list[str]:
    import docker

    client = docker.from_env()
    network = client.networks.create(f"chatscale-bench-{os.getpid()}", driver="bridge")
    network.reload()
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    (folder / "docker").mkdir()
    proc, base = start_redis(folder / "docker", ("127.0.0.1", gateway))
    redis_url = f"{base}/0"
    config = Config.model_validate(
        {
            "redis": {"url": redis_url},
            "shard": {"max_sessions": 1, "network": network.name, "boot_timeout": 60},
            "heartbeat": {"interval": 1, "timeout": 4},
            "policy": {
                "min_shards": 1,
                "max_shards": 3,
                "target_utilization": 1.0,
                "buffer": {"slots": 0, "percent": 0},
            },
            "reconcile": {"interval": 30},  # only the nudge can make the pass happen quickly
            "runtime": {"project": f"bench{os.getpid()}"},
            "nginx": {"enabled": False},
        }
    )
    try:
        return reaction(config, client) + bare_run(config, client)
    finally:
        for container in client.containers.list(
            all=True, filters={"label": f"chatscale.project={config.runtime.project}"}
        ):
            container.remove(force=True)
        stop(proc)
        network.remove()
        client.close()


def reaction(config: Config, client: object) -> list[str]:
    """Nudge (a shard reporting full, with one refused session) -> container running ->
    shard routable. The daemon runs as a real `autoscaler run` process."""
    import yaml

    folder = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    status_port = free_port()
    data = config.model_dump(mode="json")
    data["status"] = {"bind": f"127.0.0.1:{status_port}"}
    data["activator"] = {"bind": f"127.0.0.1:{free_port()}"}
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    daemon = start(
        [
            str(Path(sys.executable).with_name("autoscaler")),
            "run",
            "--config",
            str(folder / "config.yaml"),
        ],
        folder / "autoscaler.log",
    )
    name = f"{config.runtime.project}-shard-2"
    try:
        wait_for(lambda: _ready(status_port) >= 1, 120, "shard-1 ready")
        time.sleep(3)  # let the first pass settle
        r = redis.Redis.from_url(config.redis.url)
        r.sadd(KEYS.shard_sessions("shard-1"), "s1")  # shard-1 is full (max_sessions 1)
        r.zadd(KEYS.pending, {"s2": time.time()})  # ... and refused a create
        began = time.monotonic()
        r.publish(KEYS.nudge, "shard-1")
        wait_for(lambda: _running(client, name), 60, "shard-2 running", interval=0.02)
        running = time.monotonic() - began
        wait_for(lambda: _ready(status_port) >= 2, 120, "shard-2 routable", interval=0.05)
        routable = time.monotonic() - began
    finally:
        stop(daemon)
    return [
        f"| autoscaler: nudge -> container running | {running:.2f} s |",
        f"| autoscaler: nudge -> routable (fresh heartbeat, in the ring) | {routable:.2f} s |",
    ]


def bare_run(config: Config, client: object) -> list[str]:
    from autoscaler.runtimes.docker import container_args

    args = container_args(config, "shard-9")
    args["name"] = f"{config.runtime.project}-bare"
    args["labels"] = {"chatscale.project": config.runtime.project}
    began = time.monotonic()
    container = client.containers.run(**args)  # type: ignore[attr-defined]
    started = time.monotonic() - began
    container.reload()
    ip = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    wait_for(lambda: http_ok(f"http://{ip}:8000/health"), 60, "bare shard /health", interval=0.05)
    booted = time.monotonic() - began
    return [
        f"| bare `docker run` of the same image: returned | {started:.2f} s |",
        f"| bare `docker run` + shard boot to /health | {booted:.2f} s |",
    ]


def _running(client: object, name: str) -> bool:
    try:
        container = client.containers.get(name)  # type: ignore[attr-defined]
    except Exception:
        return False
    return bool(container.attrs["State"]["Running"])


def _ready(status_port: int) -> int:
    import json

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status", timeout=2) as r:
            shards = json.load(r)["shards"]
    except OSError:
        return 0
    return sum(1 for s in shards if s["state"] == "ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-docker", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    proc, base = start_redis(folder)
    redis_url = f"{base}/0"
    print("command: `.venv/bin/python bench/bench_daemon.py`  ")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(
        f"machine: {os.cpu_count()} CPU, {platform.machine()}, Python {platform.python_version()}"
        f", load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n"
    )
    try:
        print("\n".join(pass_section(redis_url)))
    finally:
        stop(proc)
    if not args.skip_docker:
        print("\n| Docker (real shard image, nginx not involved) | time |\n|---|---|")
        print("\n".join(docker_section(folder)))


if __name__ == "__main__":
    main()
