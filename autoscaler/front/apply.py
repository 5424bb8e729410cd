"""Put a rendered nginx.conf into service safely: validate, swap atomically, reload, confirm.

The order is what makes it fail safe. The candidate is written next to the live file and tested
with `nginx -t` as it is; only a file that passed replaces the live one (os.replace, atomic), and
only then is nginx told to reload. Any failure leaves the last good file on disk and nginx serving
it, and comes back as an ApplyResult carrying nginx's own message. With a confirm URL, a reload
counts only once the front answers with the new version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from autoscaler.front.reload import Reloader, ReloadError, run_command
from chatscale_contract.config import NginxSettings

log = logging.getLogger(__name__)

CONFIG_PATH = "/__chatscale/config"
"""Served by every rendered config: {"version": ...} of the table it was rendered from."""


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

    async def apply(
        self, text: str, version: str | None = None, force: bool = False
    ) -> ApplyResult:
        """Install `text` as the live config and reload nginx, unless it is already live.

        With `version` and a confirm_url, also wait until the front serves that version.
        `force` reloads (and confirms) even an unchanged text: nginx resolves shard host names
        only when it loads a config, so a shard container replaced under the same name needs
        one; and a text installed by an attempt whose reload or confirmation failed is not
        known to be served. The caller keeps that account (front/state.py).
        """
        async with self._lock:
            if await asyncio.to_thread(_read, self.path) == text:
                if force:
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
            return ApplyResult(changed=changed, reloaded=False, error=f"reload failed: {exc}")
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
