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
from pathlib import Path

import psutil

from autoscaler.engine.cluster import Cluster
from autoscaler.runtimes.base import RuntimeFailure, ShardInstance, by_number, shard_env
from chatscale_contract import proctree
from chatscale_contract.config import Config
from chatscale_contract.ids import shard_number

log = logging.getLogger(__name__)
MARKER = "CHATSCALE_SHARD"
CONFIG_MARKER = "CHATSCALE_SETTINGS_HASH"
"""The fingerprint of the shard settings a process was started with (Docker keeps it in a
label): a shard started before a settings change is "outdated"."""
# Detach the shard from the autoscaler: a new session, and a fork whose parent exits at once, so
# the shard is adopted by init (never our zombie) and lives on when the autoscaler stops.
_DETACH = (
    "import os, sys; os.setsid(); os.fork() and os._exit(0); os.execvp(sys.argv[1], sys.argv[1:])"
)


class LocalRuntime:
    def __init__(self, config: Config):
        self.config = config
        self.folder = Path(config.runtime.local.log_dir)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.folder = Path(config.runtime.local.log_dir)

    def port(self, shard_id: str) -> int:
        return self.config.runtime.local.base_port + shard_number(shard_id) - 1

    def addr(self, shard_id: str) -> str:
        return f"{self.config.runtime.local.host}:{self.port(shard_id)}"

    def _marker(self, shard_id: str) -> str:
        return f"{self.config.runtime.project}/{shard_id}"

    async def check(self) -> None:
        """Local processes can always be started (a bad command fails each start, reported)."""

    async def cluster(self) -> Cluster | None:
        return None

    async def replace(self, shard_id: str, timeout: float) -> None:
        await self.stop(shard_id, timeout)
        await self.start(shard_id)

    async def list_shards(self) -> list[ShardInstance]:
        # Reading every process's environment takes a while: not on the event loop.
        roots = await asyncio.to_thread(shard_roots, self.config.runtime.project)
        instances = [self._instance(shard_id, proc) for shard_id, proc in roots.items()]
        return by_number([i for i in instances if i is not None])

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        proc = await self._root(shard_id)
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
            CONFIG_MARKER: self.config.fingerprint(),
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
        """SIGTERM the shard, wait up to `timeout`, then SIGKILL what is left of its tree."""
        recorded = await asyncio.to_thread(proctree.marked_tree, MARKER, self._marker(shard_id))
        root = await self._root(shard_id)
        if root is not None:
            log.info("stopping local shard %s (pid %d)", shard_id, root.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(root.pid, signal.SIGTERM)
            await self._wait_gone(shard_id, timeout)
        left = await asyncio.to_thread(proctree.marked_tree, MARKER, self._marker(shard_id))
        proctree.kill(recorded + left)

    async def _wait_gone(self, shard_id: str, timeout: float) -> None:
        for _ in range(max(1, int(timeout / 0.1))):
            if await self._root(shard_id) is None:
                return
            await asyncio.sleep(0.1)

    async def signal(self, shard_id: str, signum: int) -> None:
        root = await self._root(shard_id)
        if root is None:
            raise RuntimeFailure(f"no running process for {shard_id}")
        os.kill(root.pid, signum)

    async def _root(self, shard_id: str) -> proctree.Proc | None:
        # Reading every process's environment takes a while: not on the event loop.
        roots = await asyncio.to_thread(shard_roots, self.config.runtime.project)
        return roots.get(shard_id)

    def _instance(self, shard_id: str, proc: proctree.Proc) -> ShardInstance | None:
        try:
            shard_number(shard_id)
        except ValueError:
            return None
        detail = f"pid {proc.pid}"
        config_hash = ""
        with contextlib.suppress(psutil.Error):
            config_hash = psutil.Process(proc.pid).environ().get(CONFIG_MARKER, "")
        return ShardInstance(
            shard_id, True, proc.start, self.addr(shard_id), detail=detail, config_hash=config_hash
        )


def shard_roots(project: str) -> dict[str, proctree.Proc]:
    """shard id -> the shard's own process, for every local shard of `project`.

    Per marker the earliest-started process is the shard itself: its browser and the browser's
    helpers (which inherit the marker) all started after it.
    """
    prefix = f"{project}/"
    roots: dict[str, proctree.Proc] = {}
    marked = [p for p in proctree.scan(MARKER).values() if p.marker and p.marker.startswith(prefix)]
    for proc in sorted(marked, key=lambda p: (p.start, p.pid), reverse=True):
        assert proc.marker is not None
        roots[proc.marker.removeprefix(prefix)] = proc
    return roots
