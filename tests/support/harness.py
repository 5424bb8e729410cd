"""A runtime under test (Docker or local processes) and ways to look at and break its shards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

from autoscaler.loop.daemon import Daemon
from autoscaler.runtimes.local import MARKER, shard_roots
from chatscale_contract import proctree
from chatscale_contract.beat import Beat
from chatscale_contract.keys import Keys
from support.procs import free_port, free_port_block

KEYS = Keys("cs:")
TESTS = Path(__file__).resolve().parents[1]
HEARTBEAT_IMAGE = "chatscale-heartbeat-test:latest"


@dataclass
class Harness:
    """One runtime under test: its config and ways to look at and break its shards."""

    kind: str
    project: str
    redis_url: str
    folder: Path
    network: str = ""
    docker: Any = None

    def config(self, **policy: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "redis": {"url": self.redis_url},
            "shard": {"max_sessions": 5, "boot_timeout": 20, "stop_timeout": 5},
            "heartbeat": {"interval": 0.5, "timeout": 2.0},
            "policy": {
                "min_shards": 1,
                "max_shards": 6,
                "target_utilization": 1.0,
                "buffer": {"slots": 1, "percent": 0},
                "scale_down": {"stabilization": 3, "max_step": 1},
                **policy,
            },
            "reconcile": {"interval": 0.5, "leader_ttl": 3},
            "runtime": {"kind": self.kind, "project": self.project},
            "nginx": {"enabled": False},
            "status": {"bind": f"127.0.0.1:{free_port()}"},
            "activator": {"bind": f"127.0.0.1:{free_port()}"},
        }
        if self.kind == "docker":
            config["shard"] |= {"image": HEARTBEAT_IMAGE, "network": self.network}
        else:
            script = str(TESTS / "support" / "heartbeat_shard.py")
            config["runtime"]["local"] = {
                "base_port": free_port_block(),
                "command": [sys.executable, script],
                "log_dir": str(self.folder / "shards"),
            }
        return config

    def write(self, config: dict[str, Any], name: str = "config.yaml") -> Path:
        path = self.folder / name
        path.write_text(yaml.safe_dump(config))
        return path

    def running(self) -> list[str]:
        """Shard ids with a running container / process, by asking the system directly."""
        if self.kind == "docker":
            found = self.docker.containers.list(
                filters={"label": f"chatscale.project={self.project}"}
            )
            return sorted(c.labels["chatscale.shard"] for c in found)
        return sorted(shard_roots(self.project))

    def kill(self, shard_id: str) -> None:
        """SIGKILL one shard, as a crash would."""
        if self.kind == "docker":
            self.docker.containers.get(f"{self.project}-{shard_id}").kill(signal="SIGKILL")
            return
        os.kill(shard_roots(self.project)[shard_id].pid, signal.SIGKILL)

    def identity(self, shard_id: str) -> str:
        """Container id / pid: changes when a shard is replaced; "" while none runs (one
        look at the system, so a shard that dies between two looks cannot raise)."""
        if self.kind == "docker":
            found = self.docker.containers.list(filters={"name": f"^{self.project}-{shard_id}$"})
            return str(found[0].id) if found else ""
        root = shard_roots(self.project).get(shard_id)
        return str(root.pid) if root else ""

    # --- the stand-in shards' sessions, through their own endpoints --------------------------

    def endpoint(self, shard_id: str) -> str:
        """host:port where this test reaches a shard (a container's IP on the test network)."""
        if self.kind == "docker":
            container = self.docker.containers.get(f"{self.project}-{shard_id}")
            ip = container.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]
            return f"{ip}:8000"
        return self._beats()[shard_id].addr

    def create(self, sessions: list[str]) -> list[str]:
        """Create sessions on beating shards with room, as a client would (PUT on a shard,
        which claims through the registry); returns those every shard refused."""
        refused = []
        shards = sorted(self._beats())
        for sid in sessions:
            if not any(self._call("PUT", shard, sid) == 201 for shard in shards):
                refused.append(sid)
        return refused

    def delete_all(self) -> None:
        for shard_id in self.running():
            for sid in self._redis().smembers(KEYS.shard_sessions(shard_id)):
                self._call("DELETE", shard_id, sid)

    def owned(self, shard_id: str) -> int:
        return int(self._redis().scard(KEYS.shard_sessions(shard_id)))

    def beating(self, count: int) -> bool:
        """`count` shards run, each with a heartbeat in Redis."""
        running = self.running()
        return len(running) == count and set(running) <= set(self._beats())

    def _beats(self) -> dict[str, Beat]:
        client = self._redis()
        beats = (client.hgetall(KEYS.shard(s)) for s in client.zrange(KEYS.shards, 0, -1))
        return {b["id"]: Beat.parse(b) for b in beats if b}

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def _call(self, method: str, shard_id: str, sid: str) -> int:
        url = f"http://{self.endpoint(shard_id)}/api/sessions/{sid}"
        request = urllib.request.Request(url, data=json.dumps({}).encode(), method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def cleanup(self) -> None:
        if self.kind == "docker":
            label = f"chatscale.project={self.project}"
            for container in self.docker.containers.list(all=True, filters={"label": label}):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
            return
        procs = proctree.scan(MARKER)
        ours = {p.pid for p in procs.values() if (p.marker or "").startswith(f"{self.project}/")}
        proctree.kill(proctree.tree(procs, ours))


async def passes(daemon: Daemon, done: Callable[[], bool], seconds: float) -> None:
    """Reconcile passes until `done()`; fails naming the last decision after `seconds`."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"not within {seconds} s: {daemon.state.decisions[0]}"
        await daemon.reconcile()
        await asyncio.sleep(0.3)
