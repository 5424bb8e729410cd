"""Telling the nginx beside the front agent to load its config file: SIGHUP to its master.

`LocalReloader` makes nginx read the live file (starting nginx if none runs) and raises
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

import psutil

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
        # -e: log startup errors where the config logs, not to nginx's compiled-in default path.
        argv = [self.settings.binary, "-e", self.settings.error_log, "-c", self.config_path]
        log.info("nginx is not running; starting it: %s", " ".join(argv))
        # The daemon keeps this process's stderr (its stdout it points at /dev/null): with
        # error_log and access_log /dev/stderr (the compose setup) its logs reach the container
        # log. (Given a temporary file, as for `nginx -t`, they went to a deleted file.)
        code, _ = await run_command(argv, self.start_timeout, inherit=True)
        if code != 0:
            raise ReloadError(f"starting nginx failed (exit {code}): see its message in this log")


def running_pid(pid_path: Path) -> int | None:
    """The pid in `pid_path` if it names a live (not zombie) nginx process, else None."""
    try:
        pid = int(pid_path.read_text().strip())
        proc = psutil.Process(pid)
        # A stale pid file may name a recycled pid; never send SIGHUP to something else.
        if not proc.name().startswith("nginx") or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return pid


def kill_leftovers(master: int) -> int:
    """SIGKILL what is left of an nginx whose master `master` died: its workers.

    A master killed outright leaves its workers running, and they keep the listening port, so a
    new nginx could not start. The master made itself a session leader when it daemonized, so
    its workers are exactly the processes of session `master`. Returns how many were killed.
    """
    killed = 0
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.pid != master and os.getsid(proc.pid) == master:
                proc.kill()
                killed += 1
    return killed


async def run_command(argv: list[str], limit: float, inherit: bool = False) -> tuple[int, str]:
    """Run argv; return (exit code, its stdout and stderr). Kills it after `limit` seconds.
    `inherit`: its output goes to this process's stdout and stderr instead ("" returned)."""
    # A file, not a pipe: a daemon it starts may keep a pipe open, and reading it would hang.
    with tempfile.TemporaryFile() as output:
        sink = None if inherit else output
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink
        )
        try:
            code = await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TimeoutError(f"{argv[0]} did not finish within {limit:g} s") from None
        output.seek(0)
        return code, output.read().decode(errors="replace").strip()
