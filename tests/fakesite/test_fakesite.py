"""The WhatsApp Web stand-in (fakesite; not affiliated) driven by real Chromium via Playwright.

One browser per module (conftest.py) and two servers: `python -m fakesite` as a child process
(default, slow QR rotation) and an in-process app with fast rotation for the rotation test.
Heavy mode has its own tests (test_heavy.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, expect
from support.procs import free_port, port_open, stop, wait_for

from fakesite import BANNER, create_app

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

TESTS_DIR = Path(__file__).resolve().parents[1]
QR = "div[data-ref]"
QR_CANVAS = 'canvas[aria-label="Scan me!"]'
LOGGED_IN = "#pane-side"
COMPOSE = 'footer div[contenteditable="true"][data-tab="10"]'
SEND = 'span[data-icon="send"]'
BUBBLE = "#main [data-id]"
TIMEOUT_MS = 5000
READ_IDB = """() => new Promise((resolve) => {
  const req = indexedDB.open("wa", 1);
  req.onupgradeneeded = () => req.result.createObjectStore("auth");
  req.onsuccess = () => {
    const get = req.result.transaction("auth").objectStore("auth").get("token");
    get.onsuccess = () => { req.result.close(); resolve(get.result ?? null); };
  };
})"""


@dataclass
class Session:
    """A logged-in browser context on the stand-in."""

    context: BrowserContext
    page: Page
    phone: str


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m fakesite` on a free loopback port (QR rotation 20 s); yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("fakesite") / "fakesite.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fakesite", "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(lambda: port_open(port), 15, f"fakesite on port {port} (log: {log})")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fast_site() -> AsyncIterator[str]:
    """An in-process create_app() whose QR rotates every 0.6 s."""
    runner = web.AppRunner(create_app(qr_rotate_seconds=0.6))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture(loop_scope="module")
async def session(context: BrowserContext, site: str) -> Session:
    page = await context.new_page()
    await login(page, site, "4915112345678")
    return Session(context, page, "4915112345678")


# ---- helpers -----------------------------------------------------------------------------


async def call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


async def state(site: str) -> dict[str, Any]:
    status, body = await call("GET", f"{site}/api/state")
    assert status == 200
    return dict(body)


async def current_ref(page: Page) -> str:
    ref = await page.locator(QR).get_attribute("data-ref", timeout=TIMEOUT_MS)
    assert ref and ref.startswith("2@"), ref
    return ref


async def scan(site: str, ref: str, phone: str | None = None) -> tuple[int, Any]:
    body = {"ref": ref} if phone is None else {"ref": ref, "phone": phone}
    return await call("POST", f"{site}/api/scan", body)


async def login(page: Page, site: str, phone: str) -> None:
    await page.goto(f"{site}/")
    status, body = await scan(site, await current_ref(page), phone)
    assert status == 200, body
    await expect(page.locator(LOGGED_IN)).to_be_visible()
    await expect(page.locator("#account-phone")).to_have_text(f"+{phone}")


async def stored_tokens(page: Page) -> tuple[str | None, str | None]:
    local = await page.evaluate("() => localStorage.getItem('wa_token')")
    return local, await page.evaluate(READ_IDB)


async def restore(browser: Browser, snapshot: dict[str, Any]) -> BrowserContext:
    """A new context from a snapshot that went through JSON, as it would through Redis."""
    ctx = await browser.new_context(storage_state=json.loads(json.dumps(snapshot)))
    ctx.set_default_timeout(TIMEOUT_MS)
    return ctx


async def canvas_png(page: Page) -> str:
    return str(await page.locator(QR_CANVAS).evaluate("(c) => c.toDataURL()"))


# ---- tests -------------------------------------------------------------------------------


async def test_login_page_shows_banner_and_qr(context: BrowserContext, site: str) -> None:
    page = await context.new_page()
    await page.goto(f"{site}/")
    await expect(page.locator("#fakesite-banner")).to_have_text(BANNER)
    assert BANNER in await page.content()
    ref = await current_ref(page)
    await expect(page.locator(f"{QR} > {QR_CANVAS}")).to_be_visible()
    blank = await page.evaluate("() => document.createElement('canvas').toDataURL()")
    assert await canvas_png(page) != blank
    assert ref in (await state(site))["refs"]
    await expect(page.locator(LOGGED_IN)).to_have_count(0)


async def test_qr_rotates_and_stale_refs_are_refused(
    context: BrowserContext, fast_site: str
) -> None:
    page = await context.new_page()
    await page.goto(f"{fast_site}/")
    first, first_png = await current_ref(page), await canvas_png(page)
    await expect(page.locator(QR)).not_to_have_attribute("data-ref", first)
    assert await current_ref(page) != first
    assert await canvas_png(page) != first_png
    status, body = await scan(fast_site, first)
    assert (status, body) == (410, {"error": "qr ref expired or already used"})
    status, body = await scan(fast_site, "2@never-issued")
    assert (status, body) == (404, {"error": "unknown qr ref"})
    await expect(page.locator(LOGGED_IN)).to_have_count(0)


async def test_scan_logs_in_and_reload_keeps_login(session: Session, site: str) -> None:
    local, indexed = await stored_tokens(session.page)
    assert local and local == indexed
    sessions = (await state(site))["sessions"]
    assert {"token": local, "phone": session.phone} in sessions
    assert await scan(site, "2@never-issued") == (404, {"error": "unknown qr ref"})
    await session.page.reload()
    await expect(session.page.locator(LOGGED_IN)).to_be_visible()
    await expect(session.page.locator(QR)).to_have_count(0)


async def test_a_ref_scans_only_once(context: BrowserContext, site: str) -> None:
    page = await context.new_page()
    await page.goto(f"{site}/")
    ref = await current_ref(page)
    assert (await scan(site, ref))[0] == 200
    assert (await scan(site, ref))[0] == 410
    await expect(page.locator(LOGGED_IN)).to_be_visible()
    await expect(page.locator("#account-phone")).to_have_text("+15550001234")


async def test_send_records_message_and_shows_bubble(session: Session, site: str) -> None:
    page = session.page
    await page.goto(f"{site}/send?phone=%2B44%207700%20900123&text=hello%20there")
    compose = page.locator(COMPOSE)
    await expect(compose).to_have_text("hello there")
    await compose.press("Enter")
    await expect(page.locator(BUBBLE)).to_have_count(1)
    await compose.fill("second one")
    await page.locator(SEND).click()
    await expect(page.locator(BUBBLE)).to_have_count(2)
    await expect(compose).to_have_text("")
    ids = [await b.get_attribute("data-id") for b in await page.locator(BUBBLE).all()]
    recorded = [m for m in (await state(site))["messages"] if m["id"] in ids]
    assert [(m["sender"], m["to"], m["text"]) for m in recorded] == [
        (session.phone, "447700900123", "hello there"),
        (session.phone, "447700900123", "second one"),
    ]
    await expect(page.locator(f'{LOGGED_IN} [data-chat="447700900123"]')).to_be_visible()


async def test_incoming_messages_and_acks_reach_the_page(session: Session, site: str) -> None:
    """A contact's message shows in the chat list (and in the open chat); a sent message's ack
    changes its icon; the account's own id is in localStorage, as WhatsApp Web keeps it."""
    page = session.page
    wid = await page.evaluate("() => localStorage.getItem('last-wid-md')")
    assert wid == f'"{session.phone}:7@c.us"'
    body = {"to": session.phone, "from": "+49 151 0000 0001", "text": "hi there"}
    status, got = await call("POST", f"{site}/api/incoming", body)
    assert status == 200 and got["id"].startswith("false_4915100000001@c.us_"), got
    preview = page.locator(f'{LOGGED_IN} [data-id="{got["id"]}"]')
    await expect(preview).to_have_text("hi there")
    await page.locator(f'{LOGGED_IN} [data-chat="4915100000001"]').click()
    await expect(page.locator(BUBBLE)).to_have_count(1)

    await page.locator(COMPOSE).fill("hello back")
    await page.locator(COMPOSE).press("Enter")
    await expect(page.locator(BUBBLE)).to_have_count(2)
    sent = await page.locator(BUBBLE).nth(1).get_attribute("data-id")
    icon = page.locator(f'#main [data-id="{sent}"] [data-icon]')
    await expect(icon).to_have_attribute("aria-label", " Sent ")
    assert (await call("POST", f"{site}/api/ack", {"id": sent, "ack": "read"}))[0] == 200
    await expect(icon).to_have_attribute("aria-label", " Read ")
    assert (await call("POST", f"{site}/api/ack", {"id": sent, "ack": "sideways"}))[0] == 400
    nobody = {"to": "15550009999", "from": "4915100000001", "text": "x"}
    assert (await call("POST", f"{site}/api/incoming", nobody))[0] == 404


async def test_send_url_when_logged_out_shows_login(context: BrowserContext, site: str) -> None:
    page = await context.new_page()
    await page.goto(f"{site}/send?phone=15557654321&text=after%20login")
    await expect(page.locator(COMPOSE)).to_have_count(0)
    status, _ = await scan(site, await current_ref(page), "15550009999")
    assert status == 200
    await expect(page.locator(COMPOSE)).to_have_text("after login")


async def test_snapshot_with_indexeddb_restores_login(
    session: Session, browser: Browser, site: str
) -> None:
    snapshot = await session.context.storage_state(indexed_db=True)
    assert any(origin.get("indexedDB") for origin in snapshot["origins"]), snapshot
    restored = await restore(browser, dict(snapshot))
    try:
        page = await restored.new_page()
        await page.goto(f"{site}/send?phone=15551112222&text=from%20restored")
        await expect(page.locator(LOGGED_IN)).to_be_visible()
        await expect(page.locator("#account-phone")).to_have_text(f"+{session.phone}")
        await page.locator(COMPOSE).press("Enter")
        await expect(page.locator(BUBBLE)).to_have_count(1)
        assert await stored_tokens(page) == await stored_tokens(session.page)
    finally:
        await restored.close()
    sent = (await state(site))["messages"][-1]
    assert (sent["sender"], sent["text"]) == (session.phone, "from restored")


async def test_snapshot_without_indexeddb_is_not_logged_in(
    session: Session, browser: Browser, site: str
) -> None:
    snapshot = await session.context.storage_state(indexed_db=False)
    assert not any(origin.get("indexedDB") for origin in snapshot["origins"])
    restored = await restore(browser, dict(snapshot))
    try:
        page = await restored.new_page()
        await page.goto(f"{site}/")
        await current_ref(page)
        local, indexed = await stored_tokens(page)
        assert local and indexed is None  # localStorage alone is not enough
        await expect(page.locator(LOGGED_IN)).to_have_count(0)
    finally:
        await restored.close()


async def test_logout_revokes_token(session: Session, browser: Browser, site: str) -> None:
    token, _ = await stored_tokens(session.page)
    snapshot = await session.context.storage_state(indexed_db=True)
    await session.page.goto(f"{site}/logout")
    await current_ref(session.page)
    assert await stored_tokens(session.page) == (None, None)
    assert await call("GET", f"{site}/api/whoami?token={token}") == (
        401,
        {"error": "token revoked or unknown"},
    )
    assert token in (await state(site))["revoked"]
    restored = await restore(browser, dict(snapshot))
    try:
        page = await restored.new_page()
        await page.goto(f"{site}/")
        await current_ref(page)
        await expect(page.locator(LOGGED_IN)).to_have_count(0)
    finally:
        await restored.close()


async def test_api_rejects_bad_requests(site: str) -> None:
    assert (await call("POST", f"{site}/api/scan", {"phone": "1"}))[0] == 400
    body = {"token": "nope", "to": "15550001111", "text": "x"}
    assert await call("POST", f"{site}/api/messages", body) == (
        401,
        {"error": "token revoked or unknown"},
    )
    assert (await call("POST", f"{site}/api/logout", {"token": "nope"}))[0] == 401
    assert (await call("GET", f"{site}/api/login/poll?client=nope"))[0] == 404


async def test_a_page_told_to_grow_holds_that_much_more_memory_once(
    session: Session, site: str
) -> None:
    """POST /api/grow: the account's page allocates and touches that many MB on its next poll;
    a reload starts small again (the growth is not replayed)."""
    page = session.page
    used = "() => performance.memory ? performance.memory.usedJSHeapSize : 0"
    before = await page.evaluate(used)
    status, body = await call("POST", f"{site}/api/grow", {"phone": session.phone, "mb": 64})
    assert status == 200 and body["pending_mb"] == 64, body
    await expect(page.locator(LOGGED_IN)).to_be_visible()
    deadline = asyncio.get_running_loop().time() + 10
    while await page.evaluate("() => ballast.length") < 64:
        assert asyncio.get_running_loop().time() < deadline, "the page never grew"
        await asyncio.sleep(0.1)
    assert await page.evaluate(used) - before >= 60 * 2**20  # typed arrays: ~all counted
    await page.reload()
    await expect(page.locator(LOGGED_IN)).to_be_visible()
    await asyncio.sleep(1)  # a few polls: nothing is pending any more
    assert await page.evaluate("() => ballast.length") == 0
    bad = [({"phone": session.phone, "mb": 0}, 400), ({"phone": "15550007777", "mb": 1}, 404)]
    for request, expected in bad:
        assert (await call("POST", f"{site}/api/grow", request))[0] == expected
