"""Benchmark the nginx front: proxy overhead, and the cost of a routing change.

Run:  .venv/bin/python bench/bench_nginx.py [--seconds 5]
Needs nginx and wrk. Prints markdown tables for docs/benchmarks.md. Targets (issue 3): nginx adds
at most 1 ms at p99 and keeps at least 0.8x the direct throughput on loopback; render + nginx -t +
reload with 1,000 shards and 100,000 exceptions within 0.5 s.

1. wrk against one small aiohttp upstream, directly and through nginx, side by side in one run
   (1 connection for latency, 32 for throughput).
2. For 10/100/1,000 shards x 1k/10k/100k exceptions: render, `nginx -t` on the candidate, and
   reload = atomic replace + SIGHUP until the front serves the new version.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from autoscaler.front.apply import NginxApplier, confirm
from autoscaler.front.reload import LocalReloader
from autoscaler.front.render import render
from autoscaler.front.table import RouteShard, RouteTable
from chatscale_contract.config import NginxSettings

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "nginx_templates"
PATH = "/api/sessions/bench-session/status"
ROUNDS = 3


def serve_upstream(port: int) -> None:
    """The stand-in shard: a fixed small JSON answer, as cheap as aiohttp gets."""

    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"shard": "shard-1", "status": "WORKING"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextmanager
def child(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def settings_in(folder: Path) -> NginxSettings:
    return NginxSettings(
        binary=shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin") or "nginx",
        config_path=str(folder / "nginx.conf"),
        pid_path=str(folder / "nginx.pid"),
        runtime_dir=str(folder / "run"),
        access_log="off",
        error_log=str(folder / "error.log"),
        listen=free_port(),
        worker_processes=1,
        # At least the benchmark's concurrency: a smaller idle pool closes and reopens
        # upstream connections under load (size it like this in production too).
        upstream_keepalive=64,
    )


@dataclass(frozen=True)
class WrkResult:
    p50_ms: float
    p99_ms: float
    rps: float


def wrk(url: str, connections: int, seconds: int) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", out, re.MULTILINE))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return WrkResult(_ms(lat["50"]), _ms(lat["99"]), rps)


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def proxy_overhead(folder: Path, seconds: int) -> None:
    up = free_port()
    settings = settings_in(folder / "proxy")
    table = RouteTable((RouteShard("shard-1", f"127.0.0.1:{up}"),))
    applier = NginxApplier(settings, NoReload())
    asyncio.run(applier.apply(render(table, settings, TEMPLATES)))
    nginx = [settings.binary, "-e", "stderr", "-c", settings.config_path, "-g", "daemon off;"]
    upstream = [sys.executable, __file__, "--upstream", str(up)]
    with child(upstream, folder / "upstream.log"), child(nginx, folder / "nginx.log"):
        wait_port(up)
        wait_port(settings.listen)
        print("| connections | path | p50 | p99 | requests/s |")
        print("|---|---|---|---|---|")
        for connections in (1, 32):
            rows = compare(up, settings.listen, connections, seconds)
            for name, r in rows.items():
                print(
                    f"| {connections} | {name} | {r.p50_ms:.3f} ms | {r.p99_ms:.3f} ms "
                    f"| {r.rps:,.0f} |"
                )
            added = rows["nginx"].p99_ms - rows["direct"].p99_ms
            ratio = rows["nginx"].rps / rows["direct"].rps
            print(f"| {connections} | nginx vs direct | | {added:+.3f} ms | {ratio:.2f}x |")


def compare(direct: int, front: int, connections: int, seconds: int) -> dict[str, WrkResult]:
    """Median of ROUNDS alternating runs per path: the machine's noise hits both alike."""
    runs: dict[str, list[WrkResult]] = {"direct": [], "nginx": []}
    for port in (direct, front):  # warm up: connections, nginx's upstream pool
        wrk(f"http://127.0.0.1:{port}{PATH}", connections, 1)
    for _ in range(ROUNDS):
        for name, port in (("direct", direct), ("nginx", front)):
            runs[name].append(wrk(f"http://127.0.0.1:{port}{PATH}", connections, seconds))
    return {
        name: WrkResult(
            statistics.median(r.p50_ms for r in results),
            statistics.median(r.p99_ms for r in results),
            statistics.median(r.rps for r in results),
        )
        for name, results in runs.items()
    }


class NoReload:
    async def reload(self) -> None:
        return None


def make_table(shards: int, exceptions: int) -> RouteTable:
    members = tuple(
        RouteShard(f"shard-{n}", f"127.0.0.1:{20000 + n}") for n in range(1, shards + 1)
    )
    ids = (str(uuid.UUID(int=i * 2654435761 + 17)) for i in range(exceptions))
    return RouteTable(members, {sid: f"shard-{i % shards + 1}" for i, sid in enumerate(ids)})


async def change_cost(settings: NginxSettings, table: RouteTable) -> tuple[float, ...]:
    """Seconds for one routing change: (render, apply, until served, nginx -t alone).

    apply = nginx -t on the candidate + fsync + atomic replace + SIGHUP; "until served" runs
    from the SIGHUP until a new connection sees the new version. nginx -t alone is measured on
    the same text beforehand, to show its share of apply.
    """
    applier = NginxApplier(settings, LocalReloader(settings))
    url = f"http://127.0.0.1:{settings.listen}"
    started = time.perf_counter()
    text = render(table, settings, TEMPLATES)
    rendered = time.perf_counter()
    result = await applier.apply(text)
    applied = time.perf_counter()
    served = await confirm(url, table.version, within=30, interval=0.005, streak=1)
    done = time.perf_counter()
    assert result.ok and served, result.error
    test_started = time.perf_counter()
    assert await applier.validate(text) is None
    test = time.perf_counter() - test_started
    return rendered - started, applied - rendered, done - applied, test


def reload_costs(folder: Path) -> None:
    settings = settings_in(folder / "reload")
    applier = NginxApplier(settings, NoReload())
    asyncio.run(applier.apply(render(RouteTable(()), settings, TEMPLATES)))
    nginx = [settings.binary, "-e", "stderr", "-c", settings.config_path, "-g", "daemon off;"]
    print(f"median of {ROUNDS} changes each\n")
    print("| shards | exceptions | render | apply | until served | total | (nginx -t) | target |")
    print("|---|---|---|---|---|---|---|---|")
    with child(nginx, folder / "nginx-reload.log"):
        wait_port(settings.listen)
        for shards in (10, 100, 1000):
            for exceptions in (1_000, 10_000, 100_000):
                # Median of ROUNDS changes, each to a different table (one exception fewer).
                runs = [
                    asyncio.run(change_cost(settings, make_table(shards, exceptions - i)))
                    for i in range(ROUNDS)
                ]
                r, a, s, t = (statistics.median(column) for column in zip(*runs, strict=True))
                target = "<= 0.5 s" if (shards, exceptions) == (1000, 100_000) else ""
                print(
                    f"| {shards:,} | {exceptions:,} | {r:.3f} s | {a:.3f} s | {s:.3f} s "
                    f"| {r + a + s:.3f} s | ({t:.3f} s) | {target} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="duration of each wrk run")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.upstream)
        return
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, {version}"
    )
    folder = Path(tempfile.mkdtemp(prefix="chatscale-bench-"))
    folder.chmod(0o755)
    try:
        print("\n### Proxy overhead (wrk, 1 thread; upstream: one aiohttp process)\n")
        proxy_overhead(folder, args.seconds)
        print("\n### Routing change cost (nginx worker_processes 1)\n")
        reload_costs(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
