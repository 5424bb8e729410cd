"""A shard with real Chromium, real Redis and the stand-in site: the life of a session."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import pytest
from support.procs import wait_for
from support.proxy import TcpProxy
from support.shards import Api, ShardFleet, scan, site_state

from chatscale_contract import proctree

pytestmark = [pytest.mark.browser]
PHONE = "4915100000001"


async def logged_in(api: Api, http: aiohttp.ClientSession, site: str, sid: str) -> None:
    """Create `sid`, read its QR and "scan" it with the stand-in's phone endpoint."""
    code, body, _ = await api.call("PUT", f"/api/sessions/{sid}", {"workspace_id": "w1"})
    assert code in (200, 201), body
    await api.wait_status(sid, "SCAN_QR_CODE")
    code, qr, _ = await api.call("GET", f"/api/sessions/{sid}/qr?format=raw")
    assert code == 200, qr
    await scan(http, site, qr["qr"], PHONE)
    await api.wait_status(sid, "WORKING")


async def test_create_scan_work_send(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    code, body, headers = await api.call("PUT", "/api/sessions/alice", {"account_id": 7})
    assert code == 201 and body["status"] == "STARTING" and body["account_id"] == "7"
    assert headers["X-Shard-Id"] == "shard-1"
    await api.wait_status("alice", "SCAN_QR_CODE")

    code, png, headers = await api.call("GET", "/api/sessions/alice/qr")
    assert code == 200 and headers["Content-Type"] == "image/png"
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
    code, raw, _ = await api.call("GET", "/api/sessions/alice/qr?format=raw")
    assert raw["qr"] in (await site_state(http, site_url))["refs"]

    await scan(http, site_url, raw["qr"], PHONE)
    await api.wait_status("alice", "WORKING")
    code, sent, _ = await api.call(
        "POST", "/api/sessions/alice/messages", {"to": "4915199999999", "text": "hello"}
    )
    assert code == 201, sent
    # The stand-in site is shared by the whole run: other tests' messages may be there too.
    messages = (await site_state(http, site_url))["messages"]
    assert [(m["to"], m["text"]) for m in messages if m["id"] == sent["message_id"]] == [
        ("4915199999999", "hello")
    ]
    code, listing, _ = await api.call("GET", "/api/sessions")
    assert [s["id"] for s in listing["sessions"]] == ["alice"]
    code, shot, _ = await api.call("GET", "/api/sessions/alice/screenshot")
    assert code == 200 and shot[:4] == b"\x89PNG"


async def test_sigkill_then_restart_restores_without_scan(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    first = fleet.start("shard-1")
    await logged_in(Api(http, first.url), http, site_url, "bob")
    scans = len((await site_state(http, site_url))["sessions"])
    recorded = first.processes()
    assert len(recorded) > 5, "the shard, its driver, Chromium and its helpers"
    first.sigkill()
    wait_for(
        lambda: not proctree.alive(recorded), 10, "every process of the SIGKILLed shard to exit"
    )

    second = fleet.start("shard-1")
    api = Api(http, second.url)
    view = await api.wait_status("bob", "WORKING", timeout=60)
    assert view["shard"] == "shard-1" and view["token"] >= 2
    assert len((await site_state(http, site_url))["sessions"]) == scans, "no new scan"
    code, sent, _ = await api.call(
        "POST", "/api/sessions/bob/messages", {"to": "4915100000002", "text": "back"}
    )
    assert code == 201, sent


async def test_another_shard_restores_after_release(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    one, two = fleet.start("shard-1"), fleet.start("shard-2")
    api_one, api_two = Api(http, one.url), Api(http, two.url)
    await logged_in(api_one, http, site_url, "carol")
    scans = len((await site_state(http, site_url))["sessions"])
    code, body, _ = await api_one.call("POST", "/api/sessions/carol/stop")
    assert code == 200 and body["status"] == "STOPPED"
    # Start it on shard-2 explicitly (as a draining shard's hand-off does).
    code, body, _ = await api_two.call(
        "PUT", "/api/sessions/carol", {}, headers={"X-Chatscale-Forwarded-By": "test"}
    )
    assert code == 201 and body["shard"] == "shard-2", body
    view = await api_two.wait_status("carol", "WORKING")
    assert view["shard"] == "shard-2"
    assert len((await site_state(http, site_url))["sessions"]) == scans, "no new scan"


async def test_an_open_that_fails_is_tried_again(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    """The site unreachable when a session opens (every connection dropped at once): the session
    stays STARTING, its error saying a retry comes, and opens once the site answers again."""
    site = urlsplit(site_url)
    async with TcpProxy(site.hostname or "127.0.0.1", site.port or 80) as proxy:
        proxy.cut()
        shard = fleet.start("shard-1", WHATSAPP_URL=proxy.url("http", ""))
        api = Api(http, shard.url)
        code, body, _ = await api.call("PUT", "/api/sessions/retry", {})
        assert code == 201, body

        deadline = time.monotonic() + 30
        view: dict[str, str] = {}
        while "trying again" not in (view.get("error") or "") and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            view = (await api.call("GET", "/api/sessions/retry"))[1]
            assert view["status"] == "STARTING", view
        assert "trying again" in (view.get("error") or ""), view
        proxy.restore()
        view = await api.wait_status("retry", "SCAN_QR_CODE")
        assert not view["error"], view
