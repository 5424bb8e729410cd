"""A snapshot applied in the session's own page (shard/restore.py) against real Chromium: what
the site stored comes back exactly, with no hidden page, once per page (not on reloads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, async_playwright
from shard import devtools
from shard.browser import CHROMIUM_ARGS, MARKER, BrowserHost
from shard.restore import Restore, origin_of, split
from shard.settings import DEBIAN_CHROMIUM
from support.procs import free_port

PAGE = (
    "<!doctype html><title>site</title>"
    "<script>window.firstRead = localStorage.getItem('a')</script>"
)

# Stores what a chat site keeps: plain records, keys as bytes, dates, maps, shared references,
# in-line and out-of-line keys, an index, and a second database.
WRITE = """async () => {
  localStorage.setItem("a", "1");
  localStorage.setItem("last-wid-md", JSON.stringify("15550001234:7@c.us"));
  const open = (name, upgrade) => new Promise((resolve, reject) => {
    const request = indexedDB.open(name, 3);
    request.onupgradeneeded = () => upgrade(request.result);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const done = (tx) => new Promise((resolve, reject) => {
    tx.oncomplete = resolve; tx.onerror = () => reject(tx.error);
  });
  const db = await open("wa", (db) => {
    db.createObjectStore("keys");
    const messages = db.createObjectStore("messages", { keyPath: "id" });
    messages.createIndex("by_chat", "chat", { unique: false });
    db.createObjectStore("counter", { autoIncrement: true });
  });
  const tx = db.transaction(["keys", "messages", "counter"], "readwrite");
  const shared = { shared: true };
  tx.objectStore("keys").put(new Uint8Array([1, 2, 3, 250]), "noise");
  tx.objectStore("keys").put(new Float64Array([1.5, -2]).buffer, new Date(0));
  tx.objectStore("keys").put({ when: new Date(86400000), big: 12345678901234567890n,
                               map: new Map([["k", 1]]), set: new Set([1, 2]),
                               left: shared, right: shared, nan: NaN }, ["a", 1]);
  for (let i = 0; i < 50; i++)
    tx.objectStore("messages").put({ id: "m" + i, chat: "c" + (i % 3), body: "x".repeat(100) });
  tx.objectStore("counter").add("first");
  await done(tx);
  db.close();
  const other = await open("other", (db) => db.createObjectStore("s"));
  const tx2 = other.transaction("s", "readwrite");
  tx2.objectStore("s").put("v", 1);
  await done(tx2);
  other.close();
}"""

READ = """async () => {
  const open = (name) => new Promise((resolve, reject) => {
    const request = indexedDB.open(name);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const get = (db, store, key) => new Promise((resolve) => {
    const request = db.transaction(store).objectStore(store).get(key);
    request.onsuccess = () => resolve(request.result);
  });
  const all = (db, store) => new Promise((resolve) => {
    const request = db.transaction(store).objectStore(store).getAll();
    request.onsuccess = () => resolve(request.result);
  });
  const db = await open("wa");
  const noise = await get(db, "keys", "noise");
  const buffer = await get(db, "keys", new Date(0));
  const rich = await get(db, "keys", ["a", 1]);
  const byChat = await new Promise((resolve) => {
    const r = db.transaction("messages").objectStore("messages").index("by_chat").count("c1");
    r.onsuccess = () => resolve(r.result);
  });
  const out = {
    version: db.version,
    noise: noise instanceof Uint8Array ? Array.from(noise) : String(noise),
    buffer: buffer instanceof ArrayBuffer ? Array.from(new Float64Array(buffer)) : String(buffer),
    when: rich.when instanceof Date ? rich.when.getTime() : null,
    big: typeof rich.big === "bigint" ? rich.big.toString() : null,
    map: rich.map instanceof Map ? rich.map.get("k") : null,
    set: rich.set instanceof Set ? [...rich.set] : null,
    sameRef: rich.left === rich.right && rich.left.shared === true,
    nan: Number.isNaN(rich.nan),
    messages: (await all(db, "messages")).length,
    byChat,
    counter: await all(db, "counter"),
    other: await get(await open("other"), "s", 1),
    local: localStorage.getItem("a"),
    firstRead: window.firstRead,
  };
  db.close();
  return out;
}"""

EXPECTED = {
    "version": 3,
    "noise": [1, 2, 3, 250],
    "buffer": [1.5, -2],
    "when": 86400000,
    "big": "12345678901234567890",
    "map": 1,
    "set": [1, 2],
    "sameRef": True,
    "nan": True,
    "messages": 50,
    "byChat": 17,
    "counter": ["first"],
    "other": "v",
    "local": "1",
    "firstRead": "1",
}


@pytest_asyncio.fixture
async def site() -> AsyncIterator[str]:
    app = web.Application()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/app"
    await runner.cleanup()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=DEBIAN_CHROMIUM, args=list(CHROMIUM_ARGS)
        )
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture
async def host() -> AsyncIterator[BrowserHost]:
    """The shard's own browser host: restores go over its DevTools connection."""
    host = BrowserHost(DEBIAN_CHROMIUM)
    await host.start()
    yield host
    await host.stop()


async def _snapshot(browser: Browser, url: str) -> dict[str, Any]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(url)
    await page.evaluate(WRITE)
    await context.add_cookies([{"name": "c", "value": "v", "url": url}])
    state = dict(await context.storage_state(indexed_db=True))
    await context.close()
    return state


@pytest.mark.parametrize("path", ["devtools", "playwright"])
async def test_a_snapshot_comes_back_exactly_in_the_sessions_own_page(
    host: BrowserHost, browser: Browser, site: str, path: str
) -> None:
    """Over the shard's own DevTools connection, and through Playwright when that is gone."""
    state = await _snapshot(browser, site)
    restore = split(state, site)
    assert restore.page_script is not None
    assert restore.context_state == {"cookies": state["cookies"], "origins": []}
    assert host.devtools is not None, "the browser host connects to its DevTools port"
    if path == "playwright":
        await host.devtools.close()
    pages: list[str] = []
    context = await host.new_context(restore.context_state)
    context.on("page", lambda p: pages.append(p.url))
    page = await context.new_page()
    async with host.init_script(page, restore.page_script):
        await page.goto(site)
    assert await page.evaluate(READ) == EXPECTED
    assert host.scripts_over_devtools == (1 if path == "devtools" else 0)
    assert [c["name"] for c in await context.cookies()] == ["c"]
    assert pages == ["about:blank"], "no page besides the session's own"
    # The site's own changes survive a reload: the snapshot is applied once per page, and
    # the script is gone once the open is done.
    await page.evaluate("localStorage.setItem('a', '2'); sessionStorage.clear()")
    await page.reload()
    assert await page.evaluate("localStorage.getItem('a')") == "2"
    await context.close()


async def test_pages_cannot_use_the_devtools_port(host: BrowserHost) -> None:
    """Chromium refuses a DevTools WebSocket that carries an Origin header, as a page's does,
    and answers its HTTP endpoints only for an IP or localhost Host (no DNS rebinding); the
    shard's own connection sends no Origin."""
    url = await asyncio.to_thread(devtools.locate, MARKER, host.marker)
    assert url is not None and url.startswith("ws://127.0.0.1:")
    version = "http" + url[2:].split("/devtools/")[0] + "/json/version"
    async with aiohttp.ClientSession() as http:
        async with http.get(version, headers={"Host": "rebound.example"}) as refused_host:
            assert refused_host.status != 200
        async with http.get(version) as answered:
            assert answered.status == 200
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"Origin": "http://127.0.0.1:9"})
        assert refused.value.status == 403
        async with http.ws_connect(url) as ws:
            await ws.send_json({"id": 1, "method": "Browser.getVersion"})
            assert "product" in (await ws.receive_json())["result"]


async def test_another_origin_still_goes_through_the_context(browser: Browser, site: str) -> None:
    state = await _snapshot(browser, site)
    other = {"origin": "http://elsewhere.test", "localStorage": [{"name": "x", "value": "y"}]}
    state["origins"].append(other)
    restore = split(state, site)
    assert restore.context_state is not None
    assert restore.context_state["origins"] == [other]
    assert split(None, site) == Restore(None, None), "no snapshot: nothing to apply"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8123/app?x=1", "http://127.0.0.1:8123"),
        ("https://web.whatsapp.com/", "https://web.whatsapp.com"),
        ("https://web.whatsapp.com:443", "https://web.whatsapp.com"),
        ("http://[::1]:80/", "http://[::1]"),
    ],
)
def test_origin_of(url: str, origin: str) -> None:
    assert origin_of(url) == origin
