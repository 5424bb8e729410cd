"""One Chromium per shard; one BrowserContext per session.

A context costs far less than a separate browser per session (docs/benchmarks.md has the figures),
which is what lets one shard hold 50 sessions. The browser is watched: if it dies, `on_crash` runs
so the session manager can reopen every session from its snapshot in a new browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from chatscale_contract import proctree

from . import devtools
from .devtools import DevTools, DevToolsError

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
    # The omnibox popup is a hidden WebUI page kept per context (about 55 MB each, measured in
    # bench/bench_shard.py); a headless session never shows an address bar.
    "--disable-features=Translate,MediaRouter,WebUIOmniboxPopup,WebUIOmniboxAimPopup",
)


class BrowserHost:
    """Owns the Playwright driver and the one browser; hands out contexts."""

    def __init__(
        self,
        executable: str,
        headless: bool = True,
        on_crash: Callable[[], Coroutine[Any, Any, None]] | None = None,
        proxy: str | None = None,
    ):
        self.executable = executable
        self.headless = headless
        self.proxy = proxy
        """The egress guard (shard/egress.py) every browser connection goes through, if any."""
        self.on_crash = on_crash
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._closing = False
        self._lock = asyncio.Lock()
        self.launches = 0
        self._devtools: DevTools | None = None
        """The shard's own DevTools connection (devtools.py); None when there is none."""
        self.scripts_over_devtools = 0
        """Init scripts sent over that connection rather than through Playwright."""
        self.marker = f"{os.getpid()}-{id(self):x}"

    async def start(self) -> None:
        self._playwright = await async_playwright().start()
        await self._launch()

    async def _launch(self) -> None:
        assert self._playwright is not None
        # Playwright sends loopback through the proxy too (it adds `<-loopback>` to Chromium's
        # bypass rules): nothing reaches the network around the guard.
        browser = await self._playwright.chromium.launch(
            executable_path=self.executable,
            headless=self.headless,
            args=[*CHROMIUM_ARGS, devtools.ARG],
            env={**os.environ, MARKER: self.marker},
            proxy={"server": self.proxy} if self.proxy else None,
        )
        browser.on("disconnected", self._disconnected)
        self._browser = browser
        self.launches += 1
        log.info("chromium %s started (launch #%d)", browser.version, self.launches)
        await self._connect_devtools()

    async def _connect_devtools(self) -> None:
        if self._devtools is not None:
            await self._devtools.close()
            self._devtools = None
        url = await asyncio.to_thread(devtools.locate, MARKER, self.marker)
        if url is None:
            log.warning("no DevTools port found: restores go through Playwright's driver")
            return
        try:
            self._devtools = await DevTools.connect(url)
        except (OSError, aiohttp.ClientError) as exc:
            log.warning("DevTools connection failed (%s): restores go through Playwright", exc)

    @property
    def devtools(self) -> DevTools | None:
        """The shard's own DevTools connection to the running browser, if there is one."""
        return self._devtools

    @contextlib.asynccontextmanager
    async def init_script(self, page: Page, source: str) -> AsyncIterator[None]:
        """`source` runs first in each new document of `page` while inside (restore.py). Sent
        over the shard's own DevTools connection when there is one (devtools.py: megabytes of
        snapshot need not pass through Playwright's driver), else through Playwright."""
        async with contextlib.AsyncExitStack() as stack:
            if not await self._devtools_script(stack, page, source):
                await stack.enter_async_context(await page.add_init_script(source))
            yield

    async def _devtools_script(
        self, stack: contextlib.AsyncExitStack, page: Page, source: str
    ) -> bool:
        tools = self._devtools
        if tools is None or tools.closed:
            return False
        cdp = await page.context.new_cdp_session(page)
        try:
            target = (await cdp.send("Target.getTargetInfo"))["targetInfo"]["targetId"]
        finally:
            await cdp.detach()
        try:
            await stack.enter_async_context(tools.init_script(target, source))
        except DevToolsError as exc:
            log.warning("init script over DevTools failed (%s); sending it through Playwright", exc)
            return False
        self.scripts_over_devtools += 1
        return True

    def _disconnected(self, _browser: Browser) -> None:
        if self._closing:
            return
        log.error("chromium disconnected unexpectedly; relaunching and restoring sessions")
        self._browser = None
        if self.on_crash is not None:
            asyncio.get_running_loop().create_task(self.on_crash())

    async def new_context(self, storage_state: dict[str, Any] | None = None) -> BrowserContext:
        # The lock covers only the relaunch check, so contexts open concurrently.
        async with self._lock:
            if self._browser is None or not self._browser.is_connected():
                await self._launch()
            browser = self._browser
        assert browser is not None
        return await browser.new_context(
            storage_state=storage_state,  # type: ignore[arg-type]
            viewport={"width": 1280, "height": 800},
        )

    async def stop(self) -> None:
        """Close the browser and the driver; no Chromium process may outlive this."""
        self._closing = True
        # Recorded before closing: once the browser is gone its helpers are adopted by init and
        # no longer show below it.
        recorded = proctree.marked_tree(MARKER, self.marker)
        if self._devtools is not None:
            await self._devtools.close()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._browser.close(), 10)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._playwright.stop(), 10)
        killed = proctree.kill(recorded + proctree.marked_tree(MARKER, self.marker))
        if killed:
            log.warning("killed %d browser process(es) left after close", killed)


MARKER = "CHATSCALE_BROWSER_OWNER"
"""Set in the browser's environment, so its process tree can be found (see proctree.py)."""
