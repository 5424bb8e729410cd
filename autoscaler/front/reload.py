"""Telling nginx to load its config file: a local master by signal, or a container.

Each reloader makes nginx read the live file (starting a local nginx if none runs) and raises
`ReloadError` saying why when it cannot; validation and installing the file are `apply`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Protocol

from chatscale_contract.config import NginxSettings

log = logging.getLogger(__name__)


class ReloadError(RuntimeError):
    """nginx could not be told to reload (or started); the message says why."""


class Reloader(Protocol):
    async def reload(self) -> None:
        """Make nginx load the live config file; raise ReloadError when that is impossible."""


class LocalReloader:
    """SIGHUP to the local nginx master named by settings.pid_path; starts nginx if none runs."""

    def __init__(self, settings: NginxSettings, start_timeout: float = 10.0) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        # nginx reads a relative -c path from its own prefix, not from our working folder.
        self.config_path = str(Path(settings.config_path).absolute())

    async def reload(self) -> None:
        pid = running_pid(Path(self.settings.pid_path))
        if pid is None:
            await self._start()
            return
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:  # exited between the check and the signal
            await self._start()

    async def _start(self) -> None:
        # nginx daemonizes; its output goes to a file because the daemon may keep a pipe open.
        # -e: log startup errors where the config logs, not to nginx's compiled-in default path.
        argv = [self.settings.binary, "-e", self.settings.error_log, "-c", self.config_path]
        log.info("nginx is not running; starting it: %s", " ".join(argv))
        code, output = await run_command(argv, self.start_timeout)
        if code != 0:
            raise ReloadError(f"starting nginx failed (exit {code}): {output}")


class DockerReloader:
    """SIGHUP to the nginx container settings.container, through the Docker API."""

    def __init__(self, settings: NginxSettings) -> None:
        if not settings.container:
            raise ValueError("DockerReloader needs nginx.container")
        self.container = settings.container

    async def reload(self) -> None:
        await asyncio.to_thread(self._signal)

    def _signal(self) -> None:
        import docker  # lazily: a local deployment needs neither the SDK loaded nor an engine

        try:
            client = docker.from_env()
            try:
                client.containers.get(self.container).kill(signal="SIGHUP")
            finally:
                client.close()
        except docker.errors.DockerException as exc:
            raise ReloadError(f"could not signal container {self.container}: {exc}") from exc


def reloader_for(settings: NginxSettings) -> Reloader:
    """The reloader the settings ask for: Docker when a container is named, else local."""
    return DockerReloader(settings) if settings.container else LocalReloader(settings)


def running_pid(pid_path: Path) -> int | None:
    """The pid in `pid_path` if it names a live nginx process, else None."""
    try:
        pid = int(pid_path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    # A stale pid file may name a recycled pid; never send SIGHUP to something else. (Without
    # /proc, e.g. on macOS, the liveness check above is all there is.)
    with contextlib.suppress(OSError):
        if not Path(f"/proc/{pid}/comm").read_text().startswith("nginx"):
            return None
    return pid


async def run_command(argv: list[str], limit: float) -> tuple[int, str]:
    """Run argv; return (exit code, its stdout and stderr). Kills it after `limit` seconds."""
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output
        )
        try:
            code = await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TimeoutError(f"{argv[0]} did not finish within {limit:g} s") from None
        output.seek(0)
        return code, output.read().decode(errors="replace").strip()
