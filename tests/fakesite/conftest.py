"""Fixtures shared by the stand-in site's tests (fakesite; not affiliated): real Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright
from shard.browser import CHROMIUM_ARGS
from shard.settings import DEBIAN_CHROMIUM

CHROMIUM = Path(DEBIAN_CHROMIUM)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    """Debian's Chromium (Playwright cannot download browsers here); fails, never skips."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (these tests never skip)")
    return str(CHROMIUM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    """One browser per test module, with the shard's Chromium flags."""
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path, args=list(CHROMIUM_ARGS))
        yield chromium
        await chromium.close()
