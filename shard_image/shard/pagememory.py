"""One page past PAGE_MEMORY_LIMIT_MB is closed and reopened from its last snapshot, alone.

A leaking page (a site bug, an account with years of media) would otherwise push the whole shard
to its memory watermark or the OOM killer, and every session on the shard would pay for it.
Every PAGE_MEMORY_INTERVAL seconds each live page is measured through a CDP session of its own:
`Runtime.getHeapUsage` gives the V8 heap (`usedSize`), what V8 tracks for Blink's objects
(`embedderHeapUsedSize`) and array buffers (`backingStorageSize`: typed arrays live outside the
JS heap, so Performance's JSHeapUsedSize misses them). A page whose sum passes the limit is
reopened in place, under the same fencing token (`SessionManager.reopen`, the path a crashed
page takes), from the snapshot the session already has: no snapshot is taken first, since a page
in that state may no longer give a good one.

The figure covers the page's own renderer (not out-of-process frames, GPU or network buffers):
what the page's script holds on to, which is what leaks. Pages are measured one after another,
so at most one is reopened at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from playwright.async_api import BrowserContext, Page

from shard.sessions import LiveSession, SessionManager

log = logging.getLogger(__name__)
MIB = 1024 * 1024
MEASURE_TIMEOUT = 5.0
"""A page that does not answer within this is skipped this round (its watcher judges it)."""
_FIGURES = ("usedSize", "embedderHeapUsedSize", "backingStorageSize")


def page_bytes(usage: Mapping[str, Any]) -> int:
    """What a page holds, from Runtime.getHeapUsage's answer (a figure it lacks counts 0)."""
    return sum(int(usage.get(name) or 0) for name in _FIGURES)


async def page_memory(context: BrowserContext, page: Page) -> int:
    """Measure `page` (of `context`) through a CDP session opened for this one call."""
    cdp = await context.new_cdp_session(page)
    try:
        return page_bytes(await cdp.send("Runtime.getHeapUsage"))
    finally:
        with contextlib.suppress(Exception):  # the page may be gone already
            await cdp.detach()


class PageMemoryGuard:
    """Measures every live page periodically; reopens those over the limit."""

    def __init__(self, manager: SessionManager):
        self.manager = manager
        self.limit_mb = manager.settings.page_memory_limit_mb
        self.interval = manager.settings.page_memory_interval

    async def run_forever(self) -> None:
        if self.limit_mb <= 0:
            return  # off
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # one bad round must not end the checks for the shard's life
                log.exception("page memory check failed")

    async def check_once(self) -> list[str]:
        """One round over the live pages; the ids of the sessions reopened."""
        reopened = []
        for session in list(self.manager.sessions.values()):
            used = await self._measure(session)
            # Still the same live copy: it may have been stopped or handed off meanwhile.
            current = self.manager.sessions.get(session.id) is session
            if used is not None and used > self.limit_mb * MIB and current:
                await self._reopen(session, used)
                reopened.append(session.id)
        return reopened

    async def _measure(self, session: LiveSession) -> int | None:
        context, page = session.context, session.page
        if context is None or page is None or page.is_closed():
            return None  # opening or closing: measured next round
        try:
            return await asyncio.wait_for(page_memory(context, page), MEASURE_TIMEOUT)
        except Exception as exc:  # navigating, closing or too busy: next round
            log.debug("page memory of %s not measured: %s", session.id, exc)
            return None

    async def _reopen(self, session: LiveSession, used: int) -> None:
        log.warning(
            "session %s: page holds %d MiB, over PAGE_MEMORY_LIMIT_MB=%d; closing it and"
            " reopening from its last snapshot",
            session.id,
            used // MIB,
            self.limit_mb,
        )
        self.manager.metrics.page_memory_reopens.inc()
        await self.manager.reopen(session.id)
