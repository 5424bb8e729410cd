"""The whole system without Docker, owned by one test: `autoscaler run` (local runtime: shards as
processes with real Chromium), `autoscaler front-agent` (real nginx), the test's Redis and the
stand-in site. Unlike scripts/run-local, each part can be stopped, killed and started again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from autoscaler.runtimes.local import MARKER
from chatscale_contract import proctree
from support.procs import free_port, free_port_block, http_ok, port_open, start, stop, wait_for
from support.scenario import API_KEY

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class LocalSystem:
    def __init__(self, folder: Path, redis_url: str, site: str, project: str, **sections: Any):
        self.folder = folder
        self.project = project
        ports = [free_port() for _ in range(4)]
        self.front_port, self.status_port, self.activator_port, self.waha_port = ports
        self.config: dict[str, Any] = {
            "redis": {"url": redis_url},
            "shard": {
                "max_sessions": 4,
                "stop_timeout": 10,
                "boot_timeout": 30,
                "env": {"API_KEY": API_KEY, "WHATSAPP_URL": site, "SNAPSHOT_INTERVAL": "30"},
            },
            "heartbeat": {"interval": 1, "timeout": 4},
            "policy": {
                "min_shards": 0,
                "max_shards": 3,
                "target_utilization": 1.0,
                "buffer": {"slots": 0, "percent": 0},
                "scale_down": {"stabilization": 30, "max_step": 1},
            },
            "reconcile": {"interval": 1, "leader_ttl": 3},
            "runtime": {
                "kind": "local",
                "project": project,
                "local": {"base_port": free_port_block(), "log_dir": str(folder / "shards")},
            },
            "nginx": {
                "template_dir": str(ROOT / "nginx_templates"),
                "config_path": str(folder / "nginx" / "nginx.conf"),
                "pid_path": str(folder / "nginx" / "nginx.pid"),
                "runtime_dir": str(folder / "nginx"),
                "access_log": str(folder / "nginx" / "access.log"),
                "error_log": str(folder / "nginx" / "error.log"),
                "listen": self.front_port,
                "waha_listen": self.waha_port,
                "reload": {"min_interval": 0.2, "max_delay": 1},
                "agent_interval": 0.5,
            },
            "activator": {"bind": f"127.0.0.1:{self.activator_port}"},
            "status": {"bind": f"127.0.0.1:{self.status_port}"},
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:  # a list, such as webhooks
                self.config[section] = values
        (folder / "nginx").mkdir(parents=True, exist_ok=True)
        self.path = folder / "config.yaml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.autoscaler: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None

    @property
    def front(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    @property
    def waha(self) -> str:
        """The WAHA-compatible API's base URL."""
        return f"http://127.0.0.1:{self.waha_port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def _env(self) -> dict[str, str]:
        return {"PATH": f"{BIN}:/usr/sbin:/sbin:/usr/bin:/bin"}

    def start_front(self) -> None:
        argv = [str(BIN / "autoscaler"), "front-agent", "--config", str(self.path)]
        # Its nginx starts once an autoscaler has published a config.
        self.agent = start(argv, self.folder / "front-agent.log", self._env())

    def start_autoscaler(self) -> None:
        argv = [str(BIN / "autoscaler"), "run", "--config", str(self.path)]
        self.autoscaler = start(argv, self.folder / "autoscaler.log", self._env())
        wait_for(lambda: port_open(self.status_port), 30, "the status page")

    def kill_autoscaler(self) -> None:
        """SIGKILL: no clean deregistration, no lock release (a crash)."""
        assert self.autoscaler is not None
        self.autoscaler.send_signal(signal.SIGKILL)
        self.autoscaler.wait(10)
        self.autoscaler = None

    def nginx_pid(self) -> int:
        """The pid of the front's nginx master."""
        return int(Path(self.config["nginx"]["pid_path"]).read_text())

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.status_url}/api/status", timeout=5) as resp:
            return dict(json.load(resp))

    def most_draining_at_once(self) -> int:
        """The most shards draining at one time, from the event log (drain, then stop or
        cancel_drain), not from sampling the status page: a drain of a few sessions can begin
        and end between two samples."""
        draining: set[str] = set()
        most = 0
        for event in sorted(self.status()["events"], key=lambda e: float(e["ts"])):
            if event["outcome"] != "ok":
                continue
            if event["kind"] == "drain":
                draining.add(event["shard"])
            elif event["kind"] in ("stop", "cancel_drain"):
                draining.discard(event["shard"])
            most = max(most, len(draining))
        return most

    def nginx_conf(self) -> str:
        path = Path(self.config["nginx"]["config_path"])
        return path.read_text() if path.exists() else ""

    def access_log(self) -> list[dict[str, str]]:
        path = Path(self.config["nginx"]["access_log"])
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def front_serves(self) -> bool:
        """nginx answers with a config the autoscaler published (an open port alone says less:
        see procs.port_open)."""
        return http_ok(f"{self.front}/__chatscale/config", timeout=2)

    def wait_front_holds(self) -> None:
        """Until the front's nginx hands what no shard takes to an activator."""
        wait_for(lambda: "upstream chatscale_activator" in self.nginx_conf(), 30, "the activator")

    def processes(self) -> list[proctree.Proc]:
        """Every process of this system's shards: the shards, their drivers and browsers."""
        procs = proctree.scan(MARKER)
        marked = {p.pid for p in procs.values() if (p.marker or "").startswith(f"{self.project}/")}
        return proctree.tree(procs, marked)

    def close(self) -> None:
        if self.autoscaler is not None:
            stop(self.autoscaler, 30)
        down = [str(BIN / "autoscaler"), "down", "--config", str(self.path)]
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(down, capture_output=True, timeout=120, env=self._env(), check=False)
        if self.agent is not None:
            stop(self.agent, 40)
        left = self.processes()
        proctree.kill(left)  # whatever `down` did not stop (a test that failed half-way)
        wait_for(lambda: not proctree.alive(left), 30, "every shard process to exit")


@contextlib.contextmanager
def local_system(
    folder: Path, redis_url: str, site: str, project: str, **sections: Any
) -> Iterator[LocalSystem]:
    system = LocalSystem(folder, redis_url, site, project, **sections)
    try:
        system.start_front()
        system.start_autoscaler()
        wait_for(system.front_serves, 30, "the front's nginx serving a config")
        yield system
    finally:
        system.close()
