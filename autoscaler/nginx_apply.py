"""Put a rendered nginx.conf into service safely: validate, swap atomically, reload, confirm.

The order is what makes it fail safe. The candidate is written next to the live file and tested
with `nginx -t` as it is; only a file that passed replaces the live one (os.replace, atomic), and
only then is nginx told to reload. Any failure leaves the last good file on disk and nginx serving
it, and comes back as an ApplyResult carrying nginx's own message. `Debouncer` (pure) decides when
a batch of changes is due, so a burst of fleet changes costs one reload, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from autoscaler.config import NginxSettings, ReloadSettings

log = logging.getLogger(__name__)

CONFIG_PATH = "/__chatscale/config"
"""Served by every rendered config: {"version": ...} of the table it was rendered from."""


class ReloadError(RuntimeError):
    """nginx could not be told to reload (or started); the message says why."""


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    """The live file was replaced."""
    reloaded: bool
    """nginx was signalled (or started) after the replacement."""
    error: str | None = None
    """Why the text was refused or the reload failed; None on success."""

    @property
    def ok(self) -> bool:
        return self.error is None


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


class NginxApplier:
    """Validates, installs and reloads rendered configs, one at a time."""

    def __init__(
        self,
        settings: NginxSettings,
        reloader: Reloader,
        test_timeout: float = 30.0,
        confirm_url: str | None = None,
        confirm_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.reloader = reloader
        self.test_timeout = test_timeout
        self.confirm_url = confirm_url
        self.confirm_timeout = confirm_timeout
        self.path = Path(settings.config_path).absolute()  # nginx resolves -c from its prefix
        self.candidate = self.path.with_name(self.path.name + ".candidate")
        self.rejected = self.path.with_name(self.path.name + ".rejected")
        self._lock = asyncio.Lock()
        # Set when the live file changed but telling nginx failed: the next apply retries.
        self._reload_owed = False

    async def apply(
        self, text: str, version: str | None = None, force: bool = False
    ) -> ApplyResult:
        """Install `text` as the live config and reload nginx, unless it is already live.

        With `version` and a confirm_url, also wait until the front serves that version.
        `force` reloads even an unchanged text: nginx resolves shard host names only when it
        loads a config, so a shard container replaced under the same name needs one. An
        unchanged text is also reloaded when the reload after its install failed.
        """
        async with self._lock:
            if await asyncio.to_thread(_read, self.path) == text:
                if force or self._reload_owed:
                    return await self._reload(version, changed=False)
                return ApplyResult(changed=False, reloaded=False)
            problem = await self.validate(text)
            if problem is not None:
                return ApplyResult(changed=False, reloaded=False, error=problem)
            try:
                await asyncio.to_thread(_commit, self.candidate, self.path)
            except OSError as exc:
                return ApplyResult(changed=False, reloaded=False, error=f"install failed: {exc}")
            return await self._reload(version, changed=True)

    async def validate(self, text: str) -> str | None:
        """Write `text` as the candidate and run `nginx -t` on it; None if nginx accepts it.

        A rejected candidate is kept as <config>.rejected, so the line numbers in nginx's
        message can be looked up.
        """
        argv = [self.settings.binary, "-t", "-q", "-e", "stderr", "-c", str(self.candidate)]
        try:
            await asyncio.to_thread(self._prepare, text)
            code, output = await run_command(argv, self.test_timeout)
        except (OSError, TimeoutError) as exc:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.candidate.unlink)
            return f"could not test the config: {exc}"
        if code == 0:
            if output:
                log.warning("nginx -t accepted the config with warnings: %s", output)
            return None
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.replace, self.candidate, self.rejected)
        return f"nginx -t rejected the config (kept as {self.rejected}): {output or code}"

    def _prepare(self, text: str) -> None:
        # nginx -t creates its temp folders and fails if their parent is missing.
        Path(self.settings.runtime_dir).mkdir(parents=True, exist_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.candidate.write_text(text)

    async def _reload(self, version: str | None, changed: bool) -> ApplyResult:
        try:
            await self.reloader.reload()
        except (ReloadError, OSError) as exc:
            self._reload_owed = True
            return ApplyResult(changed=changed, reloaded=False, error=f"reload failed: {exc}")
        self._reload_owed = False
        if version is None or self.confirm_url is None:
            return ApplyResult(changed=changed, reloaded=True)
        if await confirm(self.confirm_url, version, self.confirm_timeout):
            return ApplyResult(changed=changed, reloaded=True)
        error = f"nginx did not serve version {version} within {self.confirm_timeout:g} s"
        return ApplyResult(changed=changed, reloaded=True, error=error)


async def confirm(
    front_url: str, version: str, within: float, interval: float = 0.05, streak: int = 3
) -> bool:
    """Poll the front's config endpoint until `streak` answers in a row report `version`.

    Each poll uses a new connection: a kept-alive one could be served by an old worker that is
    finishing its requests. Several answers in a row make it unlikely that an old worker which
    had not yet closed its listening socket answered. Returns False after `within` seconds.
    """
    deadline = time.monotonic() + within
    seen = 0
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        while time.monotonic() < deadline:
            seen = seen + 1 if await _served_version(http, front_url) == version else 0
            if seen >= streak:
                return True
            await asyncio.sleep(interval)
    return False


async def _served_version(http: aiohttp.ClientSession, front_url: str) -> str | None:
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with http.get(front_url.rstrip("/") + CONFIG_PATH, timeout=timeout) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    value = body.get("version") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _commit(candidate: Path, target: Path) -> None:
    with candidate.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(candidate, target)
    # The rename itself is durable only once the folder is synced.
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class Debouncer:
    """When a pending nginx change is due: batches bursts, bounds the wait. Pure logic; the
    clock is injected, so tests drive it without sleeping.

    Never sooner than `min_interval` after the last apply; otherwise due once changes have been
    quiet for `min_interval`, or once the oldest pending change has waited `max_delay`.
    """

    def __init__(
        self, min_interval: float, max_delay: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_interval = min_interval
        self.max_delay = max_delay
        self.clock = clock
        self._first: float | None = None
        self._last_change = 0.0
        self._last_apply: float | None = None

    @classmethod
    def from_settings(
        cls, settings: ReloadSettings, clock: Callable[[], float] = time.monotonic
    ) -> Debouncer:
        return cls(settings.min_interval, settings.max_delay, clock)

    @property
    def pending(self) -> bool:
        return self._first is not None

    def changed(self) -> None:
        """Record that the desired config changed."""
        now = self.clock()
        if self._first is None:
            self._first = now
        self._last_change = now

    def applied(self) -> None:
        """Record that the pending changes were applied (successfully or not)."""
        self._first = None
        self._last_apply = self.clock()

    def wait(self) -> float | None:
        """Seconds until the pending change is due (0 when due now); None if nothing pends."""
        if self._first is None:
            return None
        settled = min(self._last_change + self.min_interval, self._first + self.max_delay)
        earliest = settled
        if self._last_apply is not None:
            earliest = max(settled, self._last_apply + self.min_interval)
        return max(0.0, earliest - self.clock())

    def due(self) -> bool:
        return self.wait() == 0.0
