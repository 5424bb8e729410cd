"""End to end without Docker: `scripts/run-local` (the README's no-Docker command) with Redis and
nginx from the system and shards as local processes running real Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support.e2e import record_timings
from support.procs import (
    free_port,
    free_port_block,
    kill_group,
    port_open,
    start,
    stop,
    wait_for,
)
from support.scenario import API_KEY, MAX_SESSIONS, Scenario, System, e2e_policy

from autoscaler.runtimes.local import MARKER, shard_roots
from chatscale_contract import proctree

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "e2elocal"


def local_config(folder: Path, redis_port: int, site: str) -> dict[str, Any]:
    front, status = free_port(), free_port()
    return {
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
        "shard": {
            "max_sessions": MAX_SESSIONS,
            "stop_timeout": 20,
            "env": {"API_KEY": API_KEY, "WHATSAPP_URL": site, "SNAPSHOT_INTERVAL": "30"},
        },
        "heartbeat": {"interval": 1, "timeout": 4},
        "policy": e2e_policy(),
        "reconcile": {"interval": 1, "leader_ttl": 5},
        "runtime": {
            "kind": "local",
            "project": PROJECT,
            "local": {"base_port": free_port_block(), "command": ["shard"], "log_dir": "shards"},
        },
        "nginx": {
            "template_dir": str(ROOT / "nginx_templates"),
            "config_path": "nginx/nginx.conf",
            "pid_path": "nginx/nginx.pid",
            "runtime_dir": "nginx",
            "access_log": "nginx/access.log",
            "error_log": "nginx/error.log",
            "listen": front,
            "waha_listen": free_port(),
            "reload": {"min_interval": 0.5, "max_delay": 2},
        },
        "status": {"bind": f"127.0.0.1:{status}"},
        "activator": {"bind": f"127.0.0.1:{free_port()}"},
    }


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start(
        [sys.executable, "-m", "fakesite", "--port", str(port), "--qr-rotate-seconds", "120"],
        tmp_path / "fakesite.log",
        {"PYTHONPATH": str(ROOT / "tests")},
    )
    wait_for(lambda: port_open(port), 15, "the stand-in site")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def ours() -> list[proctree.Proc]:
    """Every process of this test's shards: the shards, their drivers and browsers."""
    procs = proctree.scan(MARKER)
    marked = {p.pid for p in procs.values() if (p.marker or "").startswith(f"{PROJECT}/")}
    return proctree.tree(procs, marked)


async def test_run_local_end_to_end(site: str, tmp_path: Path, artifacts_dir: Path) -> None:
    redis_port = free_port()
    config = local_config(tmp_path, redis_port, site)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        "CHATSCALE_CONFIG": str(tmp_path / "config.yaml"),
        "REDIS_PORT": str(redis_port),
        "CHATSCALE_RUN_DIR": str(tmp_path / "run"),
    }
    started = time.monotonic()
    proc = start([str(ROOT / "scripts" / "run-local")], tmp_path / "run-local.log", env)
    try:
        front = f"http://127.0.0.1:{config['nginx']['listen']}"
        status = f"http://{config['status']['bind']}"

        async def kill(shard_id: str) -> None:
            os.kill(shard_roots(PROJECT)[shard_id].pid, signal.SIGKILL)

        wait_for(lambda: port_open(int(status.rsplit(":", 1)[1])), 60, "the status page")
        system = System(front, status, f"redis://127.0.0.1:{redis_port}/0", site, kill)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            report = await Scenario(system, http, started).run()
        record_timings(artifacts_dir, "local", report)
        assert report.max_seen <= MAX_SESSIONS
        assert report.peak_shards >= 3
        assert report.misrouted == [], report.misrouted
    finally:
        recorded = ours()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            kill_group(proc)  # fail this test, and leave nothing running into the next one
            proctree.kill(recorded)
            raise
    wait_for(lambda: not proctree.alive(recorded), 30, "every shard process (and Chromium) to exit")
    assert not port_open(int(config["nginx"]["listen"])), "nginx still serving"
    assert not port_open(redis_port), "the redis-server run-local started still runs"
