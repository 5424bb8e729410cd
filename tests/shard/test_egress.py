"""The egress guard with real Chromium: a page on the allowed site reaches out every way a page
can (fetch, an image, a WebSocket, a redirect, a navigation that redirects) to a canary server
on a loopback port nobody allowed; the canary hears nothing. The same page on a shard with the
guard off reaches it, so the test can fail. A create naming a forbidden origin is refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from support.procs import free_port
from support.shards import Api, ShardFleet

pytestmark = [pytest.mark.browser]
WEB = {"qr_selector": "#probe", "ready_selector": "#never"}


@contextlib.asynccontextmanager
async def canary() -> AsyncIterator[tuple[str, list[str]]]:
    """A server that notes every request it gets (its base URL, the paths)."""
    hits: list[str] = []

    async def note(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", note)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def reach_out(api: Api, site: str, bad: str) -> None:
    """Sessions whose pages try to reach `bad`; back once each page has run its script."""
    urls = f"{bad}/fetch,{site}/redirect?to={bad}/redirected"
    probe = {"driver": "web", "options": {"url": f"{site}/probe?urls={urls}", **WEB}}
    code, body, _ = await api.call("PUT", "/api/sessions/probe", probe)
    assert code == 201, body
    hop = {"driver": "web", "options": {"url": f"{site}/redirect?to={bad}/navigated", **WEB}}
    code, body, _ = await api.call("PUT", "/api/sessions/hop", hop)
    assert code == 201, body
    await api.wait_status("probe", "SCAN_QR_CODE")  # the probe page loaded: its script ran
    await asyncio.sleep(3)


async def test_browsers_reach_only_allowed_hosts(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    api = Api(http, fleet.start("shard-1").url)
    async with canary() as (bad, hits):
        code, body, _ = await api.call(
            "PUT", "/api/sessions/direct", {"driver": "web", "options": {"url": bad, **WEB}}
        )
        assert code == 400 and f"origin {bad} is not allowed" in body["error"], body
        await reach_out(api, site_url, bad)
        assert hits == [], "the guard let a browser through"


async def test_without_the_guard_the_same_pages_reach_out(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    api = Api(http, fleet.start("shard-1", EGRESS_GUARD="0").url)
    async with canary() as (bad, hits):
        await reach_out(api, site_url, bad)
        assert {"/fetch", "/redirected", "/navigated"} <= set(hits), hits
