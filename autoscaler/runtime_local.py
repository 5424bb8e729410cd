"""Shards as local child processes: the no-Docker mode (development, or hosts without Docker).

Shard N listens on `base_port + N - 1`, so its address, and with it nginx's hash ring, is stable
across restarts. Processes run in a session of their own and outlive the autoscaler. Which shards
exist is read back from the system, never from memory: every process a shard runs (its browser
too) carries `CHATSCALE_SHARD=<project>/<shard id>` in its environment, so a restarted autoscaler
finds exactly the fleet that is running, and stopping a shard leaves no stray browser behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from autoscaler.config import Config
from autoscaler.model import shard_number
from autoscaler.runtime import RuntimeFailure, ShardInstance, by_number, shard_env

log = logging.getLogger(__name__)
MARKER = "CHATSCALE_SHARD"
# Detach the shard from the autoscaler: a new session, and a fork whose parent exits at once, so
# the shard is adopted by init (never our zombie) and lives on when the autoscaler stops.
_DETACH = (
    "import os, sys; os.setsid(); os.fork() and os._exit(0); os.execvp(sys.argv[1], sys.argv[1:])"
)
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Proc:
    pid: int
    marker: str
    started_at: float


class LocalRuntime:
    def __init__(self, config: Config):
        self.config = config
        self.folder = Path(config.runtime.local.log_dir)

    def port(self, shard_id: str) -> int:
        return self.config.runtime.local.base_port + shard_number(shard_id) - 1

    def addr(self, shard_id: str) -> str:
        return f"{self.config.runtime.local.host}:{self.port(shard_id)}"

    def _marker(self, shard_id: str) -> str:
        return f"{self.config.runtime.project}/{shard_id}"

    async def list_shards(self) -> list[ShardInstance]:
        prefix = f"{self.config.runtime.project}/"
        roots = _roots(_marked_processes())
        instances = [
            self._instance(marker.removeprefix(prefix), proc)
            for marker, proc in roots.items()
            if marker.startswith(prefix)
        ]
        return by_number([i for i in instances if i is not None])

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        proc = _roots(_marked_processes()).get(self._marker(shard_id))
        return None if proc is None else self._instance(shard_id, proc)

    async def start(self, shard_id: str) -> ShardInstance:
        current = await self.inspect(shard_id)
        if current is not None:
            return current
        self.folder.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._spawn, shard_id)
        return ShardInstance(shard_id, True, time.time(), self.addr(shard_id), detail="starting")

    def _spawn(self, shard_id: str) -> None:
        port = self.port(shard_id)
        env = {
            **os.environ,
            **shard_env(self.config, shard_id, self.addr(shard_id), port),
            "HOST": self.config.runtime.local.host,
            MARKER: self._marker(shard_id),
        }
        command = list(self.config.runtime.local.command)
        log_path = self.folder / f"{self.config.runtime.project}-{shard_id}.log"
        log.info("starting local shard %s on port %d (log %s)", shard_id, port, log_path)
        try:
            with log_path.open("ab") as out:
                trampoline = subprocess.Popen(
                    [sys.executable, "-c", _DETACH, *command],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
                code = trampoline.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeFailure(f"cannot start {command}: {exc}") from exc
        if code != 0:
            raise RuntimeFailure(f"cannot start {command}: exit code {code} (see {log_path})")

    async def stop(self, shard_id: str, timeout: float) -> None:
        """SIGTERM the shard, wait up to `timeout`, then SIGKILL everything with its marker."""
        current = await self.inspect(shard_id)
        if current is not None:
            log.info("stopping local shard %s (%s)", shard_id, current.detail)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(current.detail.split()[1]), signal.SIGTERM)
            await self._wait_gone(shard_id, timeout)
        for proc in _marked_processes():
            if proc.marker == self._marker(shard_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)

    async def _wait_gone(self, shard_id: str, timeout: float) -> None:
        for _ in range(max(1, int(timeout / 0.1))):
            if await self.inspect(shard_id) is None:
                return
            await asyncio.sleep(0.1)

    async def signal(self, shard_id: str, signum: int) -> None:
        current = await self.inspect(shard_id)
        if current is None:
            raise RuntimeFailure(f"no running process for {shard_id}")
        os.kill(int(current.detail.split()[1]), signum)

    def _instance(self, shard_id: str, proc: _Proc) -> ShardInstance | None:
        try:
            shard_number(shard_id)
        except ValueError:
            return None
        return ShardInstance(
            shard_id, True, proc.started_at, self.addr(shard_id), detail=f"pid {proc.pid}"
        )


def _marked_processes() -> list[_Proc]:
    """Every live process carrying a MARKER in its environment."""
    boot = _boot_time()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        marker = next((e for e in environ if e.startswith(MARKER.encode() + b"=")), None)
        if marker is None or stat[0] == "Z":
            continue
        started = boot + int(stat[19]) / _TICKS
        value = marker.split(b"=", 1)[1].decode(errors="replace")
        found.append(_Proc(int(entry), value, started))
    return found


def _roots(procs: list[_Proc]) -> dict[str, _Proc]:
    """Per marker, the earliest-started process: the shard itself (everything else, its
    browser and the browser's daemonized helpers, started after it)."""
    roots: dict[str, _Proc] = {}
    for proc in sorted(procs, key=lambda p: (p.started_at, p.pid), reverse=True):
        roots[proc.marker] = proc
    return roots


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0
