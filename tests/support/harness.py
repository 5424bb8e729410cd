"""A runtime under test (Docker or local processes) and ways to look at and break its shards."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoscaler import proctree
from autoscaler.runtime_local import MARKER, shard_roots
from support.procs import free_port, free_port_block

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
        """Container id / pid: changes when a shard is replaced."""
        if self.kind == "docker":
            return str(self.docker.containers.get(f"{self.project}-{shard_id}").id)
        return str(shard_roots(self.project)[shard_id].pid)

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
