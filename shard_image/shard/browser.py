"""One Chromium per shard; one BrowserContext per session.

A context costs tens of MB where a separate browser per session costs hundreds (docs/benchmarks.md),
which is what lets one shard hold 50 sessions. The browser is watched: if it dies, `on_crash` runs
so the session manager can reopen every session from its snapshot in a new browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright

log = logging.getLogger(__name__)

# As root, in containers and on closed networks, Chromium needs these (docs/architecture.md).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-features=Translate,MediaRouter",
)


class BrowserHost:
    """Owns the Playwright driver and the one browser; hands out contexts."""

    def __init__(
        self,
        executable: str,
        headless: bool = True,
        on_crash: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ):
        self.executable = executable
        self.headless = headless
        self.on_crash = on_crash
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._closing = False
        self._lock = asyncio.Lock()
        self.launches = 0
        self.marker = f"{os.getpid()}-{id(self):x}"

    async def start(self) -> None:
        self._playwright = await async_playwright().start()
        await self._launch()

    async def _launch(self) -> None:
        assert self._playwright is not None
        browser = await self._playwright.chromium.launch(
            executable_path=self.executable,
            headless=self.headless,
            args=list(CHROMIUM_ARGS),
            env={**os.environ, MARKER: self.marker},
        )
        browser.on("disconnected", self._disconnected)
        self._browser = browser
        self.launches += 1
        log.info("chromium %s started (launch #%d)", browser.version, self.launches)

    def _disconnected(self, _browser: Browser) -> None:
        if self._closing:
            return
        log.error("chromium disconnected unexpectedly; relaunching and restoring sessions")
        self._browser = None
        if self.on_crash is not None:
            asyncio.get_running_loop().create_task(self.on_crash())

    async def new_context(self, storage_state: dict[str, Any] | None = None) -> BrowserContext:
        async with self._lock:
            if self._browser is None or not self._browser.is_connected():
                await self._launch()
            assert self._browser is not None
            return await self._browser.new_context(
                storage_state=storage_state,  # type: ignore[arg-type]
                viewport={"width": 1280, "height": 800},
            )

    async def stop(self) -> None:
        """Close the browser and the driver; no Chromium process may outlive this."""
        self._closing = True
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._browser.close(), 10)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._playwright.stop(), 10)
        killed = kill_stray_chromium(self.marker)
        if killed:
            log.warning("killed %d browser process(es) left after close", killed)


MARKER = "CHATSCALE_BROWSER_OWNER"
"""Environment variable set on the browser's process tree, so strays can be found later."""


def kill_stray_chromium(marker: str) -> int:
    """Last resort after close(): SIGKILL every process still carrying our marker.

    Chromium daemonizes helpers (crashpad) and Playwright starts it in a session of its own, so
    neither the process tree nor the process group finds them all; the inherited environment does.
    Only processes with this shard's own marker value are touched. Returns how many were killed.
    """
    needle = f"{MARKER}={marker}".encode()
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            if needle in environ:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed
