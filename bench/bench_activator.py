"""Benchmark: a cold start from zero shards, by phase, next to a bare start of one shard.

For each runtime, the whole system sits at zero shards (min_shards 0, no buffer; idle_to_zero
brings it back to zero between rounds). One client sends `PUT /api/sessions/{id}` through the
front, once: the activator holds it while the autoscaler starts a shard, then passes it on.
Measured: PUT -> 201 and PUT -> SCAN_QR_CODE, and the phases in between from what the system
writes down itself (the demand's timestamp in Redis, the container's start time, the shard's
process start and first heartbeat, the ring's publication). Next to it, in the same run: the
same shard started by hand (`docker run` with the runtime's exact arguments, or the `shard`
process), polled until /health answers, then the same PUT straight to it, and its QR code.

- Docker: `docker compose up` of the shipped compose file (needs the images:
  scripts/build-images --with-services).
- local: `autoscaler run` with the local runtime and `autoscaler front-agent`, as run-local.

Run:  .venv/bin/python bench/bench_activator.py [--rounds 3] [--skip docker,local]
Prints markdown for docs/benchmarks.md; leaves nothing running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.compose import compose_system
from support.e2e import e2e_config, start_site
from support.localsystem import BIN, LocalSystem, local_system
from support.procs import free_port, http_ok, port_open, start, start_redis, stop, wait_for
from support.scenario import API_KEY

from chatscale_contract.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
KEYS = Keys("cs:")
ASLEEP = {"min_shards": 0, "buffer": {"slots": 0, "percent": 0}, "idle_to_zero": 2}
PHASES = (
    ("demand", "request reaches the activator (demand recorded)"),
    ("started", "autoscaler starts the shard (container / process started)"),
    ("process", "shard process up (Python and imports)"),
    ("beat", "Chromium launched, first heartbeat"),
    ("answered", "201 to the held client"),
    ("ring", "ring with the shard published (fronts serve it)"),
    ("qr", "session at SCAN_QR_CODE"),
)


def call(method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("X-Api-Key", API_KEY)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def until_qr(url: str, timeout: float = 90) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, view = call("GET", url)
        if code == 200 and view.get("status") == "SCAN_QR_CODE":
            return time.time()
        time.sleep(0.05)
    raise TimeoutError(f"{url} never showed a QR code")


class Watch:
    """Notes, every 20 ms, when the system's own records first show each phase."""

    def __init__(self, redis_url: str, sid: str):
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.sid = sid
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            if "demand" not in self.seen:
                score = self.redis.zscore(KEYS.pending, self.sid)
                if score is not None:
                    self.seen["demand"] = score
            beat = self.redis.hgetall(KEYS.shard("shard-1"))
            if beat and "beat" not in self.seen:
                self.seen["beat"] = float(beat["ts"])
                self.seen["process"] = float(beat["started_at"])
            ring = self.redis.get(KEYS.ring)
            if "ring" not in self.seen and ring and json.loads(ring)["shards"]:
                self.seen["ring"] = time.time()
            time.sleep(0.02)

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.thread.join(5)
        self.redis.close()
        return self.seen


def cold_start(
    front: str, redis_url: str, sid: str, started_at: Callable[[], float]
) -> dict[str, float]:
    """One PUT through the front at zero shards: seconds from it to each phase."""
    watch = Watch(redis_url, sid)
    began = time.time()
    code, body = call("PUT", f"{front}/api/sessions/{sid}", {})
    answered = time.time()
    assert code == 201, (code, body)
    qr = until_qr(f"{front}/api/sessions/{sid}")
    wait_for(lambda: "ring" in watch.seen, 30, "the ring with the shard")
    seen = watch.stop()
    marks = {**seen, "answered": answered, "qr": qr, "started": started_at()}
    return {phase: marks[phase] - began for phase, _ in PHASES if phase in marks}


def back_to_zero(front: str, status: str, sid: str) -> None:
    code, body = call("DELETE", f"{front}/api/sessions/{sid}")
    assert code == 200, (code, body)

    def asleep() -> bool:
        with urllib.request.urlopen(f"{status}/api/status", timeout=5) as resp:
            return not json.load(resp)["shards"]

    wait_for(asleep, 120, "the fleet back at zero shards", interval=0.3)
    time.sleep(1)  # the ring and the fronts follow


def bare(start_shard: Callable[[], str], stop_shard: Callable[[], None]) -> dict[str, float]:
    """Start one shard by hand, poll /health, PUT straight to it, wait for its QR code."""
    began = time.time()
    base = start_shard()
    wait_for(lambda: http_ok(f"{base}/health"), 90, "the bare shard", interval=0.02)
    booted = time.time()
    try:
        code, body = call("PUT", f"{base}/api/sessions/bare-1", {})
        answered = time.time()
        assert code == 201, (code, body)
        qr = until_qr(f"{base}/api/sessions/bare-1")
    finally:
        stop_shard()
    return {"booted": booted - began, "answered": answered - began, "qr": qr - began}


# --- Docker -------------------------------------------------------------------------------------


def docker_rounds(rounds: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    import docker

    from autoscaler.runtimes.docker import container_args
    from chatscale_contract.config import Config

    client = docker.from_env()
    config = e2e_config(ROOT)
    config["policy"].update(ASLEEP)
    folder = Path(tempfile.mkdtemp(prefix="bench-activator-docker-"))
    system_runs, bare_runs = [], []
    with compose_system(folder, "v2", config) as compose:
        compose.run("up", "-d", "--no-build")
        wait_for(lambda: port_open(compose.ports["status"]), 120, "the status page")
        start_site(client, ROOT)
        wait_for(lambda: _front_holds(compose.status), 120, "the front to hold requests")
        shard_config = Config.model_validate(config)

        def container_start() -> float:
            state = client.containers.get("chatscale-shard-1").attrs["State"]
            return _epoch(state["StartedAt"])

        # Round 0 warms both paths up (page cache, first image use) and is not counted; then
        # the two alternate, so a busy minute on this shared machine hits both alike.
        for n in range(rounds + 1):
            system = cold_start(compose.front, compose.redis, f"cold-{n}", container_start)
            back_to_zero(compose.front, compose.status, f"cold-{n}")
            alone = bare(*_bare_container(client, shard_config, container_args, n))
            _progress("docker", n, system, alone)
            if n:
                system_runs.append(system)
                bare_runs.append(alone)
    client.close()
    return system_runs, bare_runs


def _bare_container(client: Any, config: Any, container_args: Any, n: int) -> tuple[Any, Any]:
    args = container_args(config, "shard-9")
    args["name"] = "chatscale-bench-bare"
    args["labels"] = {}  # not one of the fleet's: the autoscaler leaves it alone
    # ... and no shard of the fleet sees it; a fresh prefix per round: nothing to restore.
    args["environment"]["KEY_PREFIX"] = f"bench-bare-{n}:"
    holder: dict[str, Any] = {}

    def start_shard() -> str:
        container = client.containers.run(**args)
        holder["container"] = container
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"]["chatscale"]["IPAddress"]
        return f"http://{ip}:{config.shard.port}"

    def stop_shard() -> None:
        holder["container"].remove(force=True)

    return start_shard, stop_shard


def _front_holds(status: str) -> bool:
    with urllib.request.urlopen(f"{status}/api/status", timeout=5) as resp:
        data = json.load(resp)
    fronts = data["nginx"]["fronts"]
    live = bool(data["activator"]["live"])
    return live and bool(fronts) and all(bool(f["current"]) for f in fronts)


def _epoch(iso: str) -> float:
    from datetime import datetime

    head, _, fraction = iso.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head + "+00:00").timestamp()
    return moment + float(f"0.{fraction[:6] or '0'}")


# --- local processes ----------------------------------------------------------------------------


def local_rounds(rounds: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-activator-local-"))
    redis_proc, base = start_redis(folder)
    redis_url = f"{base}/0"
    site_port = free_port()
    site = start(
        [sys.executable, "-m", "fakesite", "--port", str(site_port), "--qr-rotate-seconds", "120"],
        folder / "fakesite.log",
        {"PYTHONPATH": str(ROOT / "tests")},
    )
    site_url = f"http://127.0.0.1:{site_port}"
    system_runs, bare_runs = [], []
    try:
        wait_for(lambda: port_open(site_port), 15, "the stand-in site")
        with local_system(folder / "system", redis_url, site_url, "benchcold", policy=ASLEEP) as s:
            s.wait_front_holds()
            for n in range(rounds + 1):  # round 0 is a warm-up, as for Docker
                system = cold_start(s.front, redis_url, f"cold-{n}", _process_start(s))
                back_to_zero(s.front, s.status_url, f"cold-{n}")
                alone = bare(*_bare_process(s, folder / f"bare-{n}.log", n))
                _progress("local", n, system, alone)
                if n:
                    system_runs.append(system)
                    bare_runs.append(alone)
    finally:
        stop(site)
        stop(redis_proc)
    return system_runs, bare_runs


def _process_start(system: LocalSystem) -> Callable[[], float]:
    """When the shard's process was created (the local runtime marks it; its children follow)."""

    def read() -> float:
        return min(_spawned_at(p.pid) for p in system.processes())

    return read


def _spawned_at(pid: int) -> float:
    """Epoch seconds a process started, to the clock tick: /proc/<pid>/stat counts ticks since
    boot, and the boot time psutil adds to it is whole seconds (up to 1 s off)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of the line; two fields precede the ")"
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - since_boot


def _bare_process(system: LocalSystem, log: Path, n: int) -> tuple[Any, Any]:
    port = free_port()
    env = {
        "SHARD_ID": "shard-9",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "REDIS_URL": system.config["redis"]["url"],
        "KEY_PREFIX": f"bench-bare-{n}:",
        "MAX_SESSIONS": "4",
        **system.config["shard"]["env"],
    }
    holder: dict[str, Any] = {}

    def start_shard() -> str:
        holder["proc"] = start([str(BIN / "shard")], log, env)
        return f"http://127.0.0.1:{port}"

    def stop_shard() -> None:
        stop(holder["proc"], 30)

    return start_shard, stop_shard


# --- report -------------------------------------------------------------------------------------


def _progress(name: str, n: int, system: dict[str, float], alone: dict[str, float]) -> None:
    label = "warm-up" if n == 0 else f"round {n}"
    print(
        f"{name} {label}: from zero 201 in {system['answered']:.2f} s, "
        f"bare {alone['answered']:.2f} s",
        file=sys.stderr,
        flush=True,
    )


def report(
    name: str, system_runs: list[dict[str, float]], bare_runs: list[dict[str, float]]
) -> None:
    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"### {name}\n")
    runs = len(system_runs)
    print(f"| phase (from the PUT; median of {runs} cold starts after a warm-up) | time |")
    print("|---|---|")
    for phase, words in PHASES:
        if all(phase in r for r in system_runs):
            print(f"| {words} | {median(system_runs, phase):.2f} s |")
    print(f"| bare: start + boot to /health | {median(bare_runs, 'booted'):.2f} s |")
    print(f"| bare: start + boot + PUT -> 201 | {median(bare_runs, 'answered'):.2f} s |")
    print(f"| bare: start + boot + PUT -> SCAN_QR_CODE | {median(bare_runs, 'qr'):.2f} s |")
    for key, words in (("answered", "PUT -> 201"), ("qr", "PUT -> SCAN_QR_CODE")):
        ratios = [s[key] / b[key] for s, b in zip(system_runs, bare_runs, strict=True)]
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        ratio = median(system_runs, key) / median(bare_runs, key)
        print(f"| from zero / bare, {words} | {ratio:.2f}x (rounds: {each}; target <= 1.3x) |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: docker,local")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print("command: `.venv/bin/python bench/bench_activator.py`  ")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}\n", flush=True)
    if "docker" not in skip:
        report("Docker (`docker compose up`)", *docker_rounds(args.rounds))
    if "local" not in skip:
        report("Local processes (`autoscaler run`, local runtime)", *local_rounds(args.rounds))


if __name__ == "__main__":
    main()
