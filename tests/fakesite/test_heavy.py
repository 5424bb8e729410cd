"""Heavy mode of the stand-in for WhatsApp Web (fakesite; not affiliated), on real Chromium.

A heavy page weighs like WhatsApp Web (a 5 MB script bundle, thousands of DOM nodes, a service
worker, MBs in IndexedDB, a timer) and still logs in, restores and sends like the light one,
through the shard's own whatsapp driver. The site runs as `python -m fakesite --heavy` (every
page heavy unless ?heavy=0); the per-page choice is checked on an in-process light site.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, Response, expect
from shard.drivers import PageState, Selectors, WhatsAppDriver
from support.procs import free_port, port_open, stop, wait_for

from fakesite import create_app, heavy
from fakesite.__main__ import heavy_options, parse_args
from fakesite.heavy import HeavyOptions
from fakesite.test_fakesite import (
    LOGGED_IN,
    QR,
    TESTS_DIR,
    scan,
    state,
    stored_tokens,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

IDB_MB = 6
"""Not the default (5): shows the option reaches the page."""
MB = 2**20
TICK_SECONDS = 0.5
TIMEOUT_MS = 30_000  # a heavy page runs about a second of startup script, longer on a busy box
PHONE = "4915112340001"
SHELL = "#heavy-shell"
COUNT_ELEMENTS = "() => document.getElementsByTagName('*').length"
# Everything in the heavy page's own databases, counted as heavy.js counts what it writes
# (string characters, binary bytes, 8 per number), but independently of it.
READ_HEAVY_DBS = """async () => {
  const size = (v) => {
    if (typeof v === "string") return v.length;
    if (typeof v === "number") return 8;
    if (v === null || v === undefined || typeof v === "boolean") return 1;
    if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return v.byteLength;
    let total = 0;
    for (const [key, inner] of Object.entries(v)) total += key.length + size(inner);
    return total;
  };
  const binary = (v) => v instanceof ArrayBuffer || ArrayBuffer.isView(v) ||
    (v !== null && typeof v === "object" && Object.values(v).some(binary));
  const done = (req) => new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const out = { bytes: 0, records: 0, binary: 0, stores: {}, seededAt: null };
  for (const name of ["model-storage", "signal-storage"]) {
    const db = await done(indexedDB.open(name));
    for (const store of db.objectStoreNames) {
      const values = await done(db.transaction(store).objectStore(store).getAll());
      out.stores[name + "/" + store] = values.length;
      for (const value of values) {
        out.bytes += size(value);
        out.records += 1;
        if (binary(value)) out.binary += 1;
        if (value.key === "seed") out.seededAt = value.at;
      }
    }
    db.close();
  }
  const estimate = await navigator.storage.estimate();
  out.estimate = estimate.usageDetails ? estimate.usageDetails.indexedDB || 0 : 0;
  return out;
}"""
DATABASES = "async () => (await indexedDB.databases()).map((db) => db.name).sort()"


@dataclass
class HeavySession:
    """The module's logged-in heavy page."""

    context: BrowserContext
    page: Page
    site: str


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heavy_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m fakesite --heavy` (IndexedDB seed IDB_MB, a tick every TICK_SECONDS)."""
    port = free_port()
    log = tmp_path_factory.mktemp("fakesite-heavy") / "fakesite.log"
    argv = [sys.executable, "-m", "fakesite", "--port", str(port), "--heavy"]
    argv += ["--heavy-idb-mb", str(IDB_MB), "--heavy-tick-seconds", str(TICK_SECONDS)]
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
            start_new_session=True,
        )
    try:
        wait_for(lambda: port_open(port), 15, f"fakesite --heavy on port {port} (log: {log})")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def light_site() -> AsyncIterator[str]:
    """An in-process create_app() with the defaults: pages are light unless they ask."""
    runner = web.AppRunner(create_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def new_context(browser: Browser, snapshot: dict[str, Any] | None = None) -> BrowserContext:
    """A context as the shard opens one; a snapshot goes through JSON, as through Redis."""
    restored = json.loads(json.dumps(snapshot)) if snapshot is not None else None
    ctx = await browser.new_context(storage_state=restored, viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    return ctx


async def qr_ref(page: Page) -> str:
    """The QR string, once the page (after its bundle) shows one."""
    ref = await page.locator(QR).get_attribute("data-ref", timeout=TIMEOUT_MS)
    assert ref and ref.startswith("2@"), ref
    return ref


async def login(page: Page, url: str, site: str, phone: str) -> None:
    await page.goto(url)
    status, body = await scan(site, await qr_ref(page), phone)
    assert status == 200, body
    await expect(page.locator(LOGGED_IN)).to_be_visible(timeout=TIMEOUT_MS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(browser: Browser, heavy_site: str) -> AsyncIterator[HeavySession]:
    """Logged in on a heavy page; its IndexedDB seed written."""
    ctx = await new_context(browser)
    page = await ctx.new_page()
    await login(page, f"{heavy_site}/", heavy_site, PHONE)
    await expect(page.locator(SHELL)).to_have_attribute("data-idb", "seeded", timeout=TIMEOUT_MS)
    yield HeavySession(ctx, page, heavy_site)
    await ctx.close()


# ---- helpers -----------------------------------------------------------------------------


async def heavy_status(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("() => ({ ...window.fakesiteHeavy.status })"))


async def weigh(page: Page) -> dict[str, float]:
    """The page's renderer memory as Chromium reports it, after a garbage collection."""
    cdp = await page.context.new_cdp_session(page)
    try:
        await cdp.send("HeapProfiler.collectGarbage")
        await cdp.send("Performance.enable")
        listed = (await cdp.send("Performance.getMetrics"))["metrics"]
        metrics = {m["name"]: m["value"] for m in listed}
        usage = await cdp.send("Runtime.getHeapUsage")
    finally:
        await cdp.detach()
    return {
        "js_heap_mb": metrics["JSHeapUsedSize"] / MB,
        "dom_heap_mb": usage.get("embedderHeapUsedSize", 0) / MB,
        "nodes": metrics["Nodes"],
        "listeners": metrics["JSEventListeners"],
    }


def sizes(snapshot: dict[str, Any]) -> tuple[int, int]:
    """A snapshot's bytes as JSON, and zlib-compressed."""
    raw = json.dumps(snapshot).encode()
    return len(raw), len(zlib.compress(raw))


# ---- HTTP only: what is served, and how heavy mode is chosen -----------------------------


async def test_heavy_scripts_are_served_like_an_app_bundle(heavy_site: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{heavy_site}/") as resp:
            page = await resp.text()
        bundle_url = next(a for a in page.split('"') if a.startswith("/heavy/bundle."))
        async with http.get(heavy_site + bundle_url) as resp:
            bundle = await resp.read()
            headers = resp.headers
        assert resp.status == 200 and headers["Content-Type"].startswith("application/javascript")
        assert len(bundle) >= 5 * MB and bundle.count(b"\n__d(") >= 1000
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        revalidate = {"If-None-Match": headers["ETag"]}
        async with http.get(heavy_site + bundle_url, headers=revalidate) as resp:
            assert resp.status == 304
        async with http.get(f"{heavy_site}/heavy/bundle.000000000000.js") as resp:
            assert resp.status == 404
        async with http.get(f"{heavy_site}/serviceworker.js") as resp:
            assert resp.headers["Cache-Control"] == "no-cache"
            assert bundle_url in await resp.text()
        async with http.get(f"{heavy_site}/?heavy=0") as resp:
            assert "/heavy/" not in await resp.text()
    # Generated, not stored: the same text every time (two builds, past the cache).
    assert heavy.bundle_source.__wrapped__(MB) == heavy.bundle_source.__wrapped__(MB)


async def test_a_light_site_serves_heavy_pages_on_request(light_site: str) -> None:
    """?heavy=1 makes the page heavy and is remembered (a cookie) by the browser's next loads,
    including the shard's /send; ?heavy=0 switches back; a new browser gets the site's default."""

    async def heavy_page(http: aiohttp.ClientSession, path: str) -> bool:
        async with http.get(light_site + path) as resp:
            assert resp.status == 200
            return "/heavy/bundle." in await resp.text()

    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: accept cookies from an IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        assert not await heavy_page(http, "/")
        assert await heavy_page(http, "/?heavy=1")
        assert await heavy_page(http, "/")
        assert await heavy_page(http, "/send?phone=15551234567&text=hi")
        assert not await heavy_page(http, "/?heavy=0")
        assert not await heavy_page(http, "/")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        assert not await heavy_page(http, "/")


async def test_heavy_options_from_flags_and_environment() -> None:
    env = {"FAKESITE_HEAVY": "1", "FAKESITE_HEAVY_IDB_MB": "7", "FAKESITE_HEAVY_SCRIPT_MB": "4"}
    assert heavy_options(parse_args(["--port", "1"], env)) == HeavyOptions(True, 4.0, 7.0)
    flags = ["--port", "1", "--no-heavy", "--heavy-idb-mb", "2", "--heavy-tick-seconds", "1"]
    assert heavy_options(parse_args(flags, env)) == HeavyOptions(False, 4.0, 2.0, 1.0)
    assert heavy_options(parse_args(["--port", "1"], {})) == HeavyOptions()
    for bad in ({"script_mb": 0}, {"idb_mb": -1}, {"tick_seconds": 0}):
        with pytest.raises(ValueError):
            HeavyOptions(**bad)  # type: ignore[arg-type]


# ---- the heavy page in Chromium ----------------------------------------------------------


async def test_heavy_page_runs_its_bundle_and_builds_a_large_dom(session: HeavySession) -> None:
    page = session.page
    bundle = await page.evaluate("() => ({ ...window.__fakesiteBundle, require: undefined })")
    assert bundle["modules"] >= 1000 and isinstance(bundle["checksum"], int), bundle
    assert await page.evaluate(COUNT_ELEMENTS) >= 5000
    counts = {
        "#heavy-chats > .heavy-chat": 300,
        "#heavy-chats svg.heavy-avatar": 300,
        "#heavy-messages > .heavy-msg": 400,
        '#heavy-messages img[src^="data:image/svg+xml"]': 50,
    }
    assert {selector: await page.locator(selector).count() for selector in counts} == counts
    # Nothing of it looks like a message to the shard's observer, and the contract still holds.
    assert await page.locator("[data-id]").count() == 0
    driver = WhatsAppDriver(url=session.site, selectors=Selectors())
    assert await driver.state(page) == PageState.READY
    assert await driver.me(page) == PHONE


async def test_heavy_page_registers_a_service_worker_caching_the_bundle(
    session: HeavySession,
) -> None:
    page = session.page
    await expect(page.locator(SHELL)).to_have_attribute("data-worker", "active", timeout=TIMEOUT_MS)
    script = await page.evaluate(
        "async () => (await navigator.serviceWorker.ready).active.scriptURL"
    )
    assert script == f"{session.site}/serviceworker.js"
    assert any(w.url == script for w in session.context.service_workers)
    bundle_url = await page.evaluate("() => FAKESITE_HEAVY.bundle")
    cached = await page.evaluate(
        """async () => {
          const urls = [];
          for (const name of await caches.keys()) {
            for (const req of await (await caches.open(name)).keys()) urls.push(req.url);
          }
          return urls;
        }"""
    )
    assert session.site + bundle_url in cached


async def test_login_writes_the_configured_megabytes_to_indexeddb_once(
    session: HeavySession,
) -> None:
    """IDB_MB MB in model-storage and signal-storage after the login, binary values among them;
    the token stays in localStorage + wa/auth; a reload neither rewrites the data nor downloads
    the bundle again (the service worker serves it)."""
    page = session.page
    written = await page.evaluate(READ_HEAVY_DBS)
    assert written["bytes"] >= IDB_MB * MB, written
    assert written["records"] >= 2000 and written["binary"] >= 400, written
    assert written["stores"]["model-storage/chat"] == 300, written
    # ... and loaded into the page's in-memory models, as WhatsApp Web loads its collections.
    assert (await heavy_status(page))["models"] == written["stores"]["model-storage/message"]
    local, indexed = await stored_tokens(page)
    assert local and local == indexed
    assert await page.evaluate(DATABASES) == ["model-storage", "signal-storage", "wa"]

    bundle_responses: list[Response] = []
    page.on("response", lambda r: bundle_responses.append(r) if "/heavy/bundle." in r.url else None)
    await page.reload()
    await expect(page.locator(LOGGED_IN)).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.locator(SHELL)).to_have_attribute("data-idb", "present", timeout=TIMEOUT_MS)
    assert (await heavy_status(page))["seededNow"] is False
    again = await page.evaluate(READ_HEAVY_DBS)
    assert again["seededAt"] == written["seededAt"] and again["bytes"] >= IDB_MB * MB
    assert [r.from_service_worker for r in bundle_responses] == [True]


async def test_heavy_page_keeps_busy_every_few_seconds(session: HeavySession) -> None:
    """The clock, presence and a typing indicator change and a presence record is written on
    every tick, as WhatsApp Web's page keeps doing while it is open."""
    page = session.page
    ticks = (await heavy_status(page))["ticks"]
    clock = await page.locator("#heavy-clock").inner_text()
    await expect(page.locator("#heavy-clock")).not_to_have_text(clock, timeout=TIMEOUT_MS)
    assert await page.locator(".heavy-chat-status.typing").count() == 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await heavy_status(page))["ticks"] < ticks + 3:
        assert loop.time() < deadline, "the timer stopped"
        await asyncio.sleep(0.2)
    assert (await page.evaluate(READ_HEAVY_DBS))["stores"]["model-storage/presence"] >= 1


async def test_snapshot_restores_the_heavy_login_without_a_scan(
    session: HeavySession, browser: Browser
) -> None:
    """`storage_state(indexed_db=True)` carries the MBs (binary values too); a context restored
    from it is logged in without a scan, keeps the data (no new seed), and the shard's driver
    sends from it; its observer hears only real messages, none of the heavy DOM."""
    snapshot: dict[str, Any] = dict(await session.context.storage_state(indexed_db=True))
    (origin,) = [o for o in snapshot["origins"] if o["origin"] == session.site]
    names = sorted(db["name"] for db in origin["indexedDB"])
    assert names == ["model-storage", "signal-storage", "wa"]
    raw, _ = sizes(snapshot)
    assert raw >= IDB_MB * MB
    assert '"ab": {"b": ' in json.dumps(origin) and '"ta": {"b": ' in json.dumps(origin)

    reports: list[Any] = []

    async def report(batch: Any) -> None:
        reports.append(batch)

    restored = await new_context(browser, snapshot)
    try:
        page = await restored.new_page()
        driver = WhatsAppDriver(url=session.site, selectors=Selectors())
        await driver.watch(page, report)
        pending = len((await state(session.site))["pending"])
        await driver.open(page)
        await expect(page.locator(LOGGED_IN)).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.locator(SHELL)).to_have_attribute(
            "data-idb", "present", timeout=TIMEOUT_MS
        )
        assert await page.locator(QR).count() == 0
        assert len((await state(session.site))["pending"]) == pending  # no login was started
        assert await stored_tokens(page) == await stored_tokens(session.page)
        sent = await driver.send_text(page, "+15551112222", "from a restored heavy page")
        assert sent.startswith("true_15551112222@c.us_"), sent
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sent not in {m["id"] for r in reports for m in r["messages"]}:
            assert loop.time() < deadline, reports
            await asyncio.sleep(0.1)
        known = {m["id"] for m in (await state(session.site))["messages"]}
        assert {m["id"] for r in reports for m in r["messages"]} <= known
    finally:
        await restored.close()


async def test_heavy_page_weighs_more_than_a_light_one(
    session: HeavySession, browser: Browser
) -> None:
    """Renderer memory (JS heap, DOM) and snapshot size of a logged-in light page (?heavy=0)
    against the heavy one; printed for the record (pytest -s)."""
    light = await new_context(browser)
    try:
        page = await light.new_page()
        await login(page, f"{session.site}/?heavy=0", session.site, "4915112340002")
        assert not await page.evaluate("() => 'fakesiteHeavy' in window")
        light_weight, heavy_weight = await weigh(page), await weigh(session.page)
        light_size = sizes(dict(await light.storage_state(indexed_db=True)))
        heavy_size = sizes(dict(await session.context.storage_state(indexed_db=True)))
    finally:
        await light.close()
    print(f"\nlight: {light_weight}, snapshot (json, zlib) {light_size}")
    print(f"heavy: {heavy_weight}, snapshot (json, zlib) {heavy_size}")
    assert heavy_weight["js_heap_mb"] >= light_weight["js_heap_mb"] + 15
    assert heavy_weight["nodes"] >= 10 * light_weight["nodes"]
    assert heavy_size[0] >= IDB_MB * MB > 100 * light_size[0]


async def test_logout_deletes_the_heavy_databases(session: HeavySession) -> None:
    page = session.page
    await page.goto(f"{session.site}/logout")
    await qr_ref(page)
    assert await stored_tokens(page) == (None, None)
    assert await page.evaluate(DATABASES) == ["wa"]
