"""The WAHA-compatible API on real shards (/waha/...; nginx's WAHA port adds the prefix): names
and their ids, WAHA's error forms, forwarding to the owner, and the session lifecycle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from shard.waha.names import session_id
from support.shards import API_KEY, Api, ShardFleet, ids_owned_by, publish_ring, scan

from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")


class Waha(Api):
    async def waha(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        return await self.call(method, "/waha" + path, body, headers)


async def test_errors_come_in_wahas_forms(fleet: ShardFleet, http: aiohttp.ClientSession) -> None:
    shard = fleet.start("shard-1")
    api = Waha(http, shard.url)
    async with http.get(f"{shard.url}/waha/api/sessions") as resp:
        assert resp.status == 401
        assert await resp.json() == {"message": "Unauthorized", "statusCode": 401}
    async with http.get(f"{shard.url}/waha/api/sessions?x-api-key={API_KEY}") as resp:
        assert resp.status == 200, "the key may come in the query, as WAHA allows"
        assert await resp.json() == []

    code, body, _ = await api.waha("POST", "/api/sendImage", {"session": "default"})
    assert code == 501
    assert body["statusCode"] == 501 and "POST /api/sendImage" in body["message"]

    code, body, _ = await api.waha("GET", "/api/sessions/nobody")
    assert (code, body["statusCode"], body["error"]) == (404, 404, "Not Found")
    assert "nobody" in body["message"]

    bad_hook = {"name": "s1", "config": {"webhooks": [{"url": "ftp://x", "events": ["message"]}]}}
    code, body, _ = await api.waha("POST", "/api/sessions", bad_hook)
    assert code == 400 and body["message"].startswith("config.webhooks[0].url"), body
    code, body, _ = await api.waha("POST", "/api/sessions", {"name": "no spaces please"})
    assert code == 400 and "session name" in body["message"], body
    code, body, _ = await api.waha("POST", "/api/sessions", {"name": "p", "config": {"proxy": {}}})
    assert code == 201, "an empty proxy is no proxy"
    proxied = {"name": "q", "config": {"proxy": {"server": "localhost:3128"}}}
    code, body, _ = await api.waha("POST", "/api/sessions", proxied)
    assert code == 400 and "config.proxy" in body["message"]
    code, body, _ = await api.waha("POST", "/api/sendText", {"session": "p", "chatId": "1@g.us"})
    assert code == 400 and "chatId" in body["message"]


async def test_names_map_to_ids_without_collisions(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    shard = fleet.start("shard-1")
    api = Waha(http, shard.url)
    for name in ("Sales_EU", "SALES_EU", "sales_eu"):
        code, body, _ = await api.waha("POST", "/api/sessions", {"name": name, "start": False})
        assert (code, body["name"], body["status"]) == (201, name, "STOPPED"), body
    ids = {session_id(n) for n in ("Sales_EU", "SALES_EU", "sales_eu")}
    assert len(ids) == 3 and "sales_eu" in ids
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    assert await client.hget(KEYS.session(session_id("Sales_EU")), "name") == "Sales_EU"
    # A lowercase name spelled like another name's id is refused, not merged.
    code, body, _ = await api.waha("POST", "/api/sessions", {"name": session_id("Sales_EU")})
    assert code == 409 and "'Sales_EU'" in body["message"], body
    await client.aclose()

    code, listed, _ = await api.waha("GET", "/api/sessions")
    assert code == 200 and listed == [], "stopped sessions only with ?all=true"
    code, listed, _ = await api.waha("GET", "/api/sessions?all=true")
    assert sorted(s["name"] for s in listed) == ["SALES_EU", "Sales_EU", "sales_eu"]
    code, listed, _ = await api.waha("GET", "/api/sessions?all=true&limit=2&offset=1")
    assert [s["name"] for s in listed] == ["SALES_EU", "sales_eu"], "oldest first, paged"
    code, listed, _ = await api.waha("GET", "/api/sessions?status=STOPPED")
    assert len(listed) == 3
    code, body, _ = await api.waha("GET", "/api/sessions?status=ASLEEP")
    assert code == 400 and "status" in body["message"]
    code, body, _ = await api.waha("POST", "/api/sessions", {"name": "Sales_EU"})
    assert code == 422 and "already exists" in body["message"]
    code, body, _ = await api.waha("DELETE", "/api/sessions/SALES_EU")
    assert code == 200
    code, listed, _ = await api.waha("GET", "/api/sessions?all=true")
    assert sorted(s["name"] for s in listed) == ["Sales_EU", "sales_eu"]


async def test_lifecycle_across_two_shards(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str, site_url: str
) -> None:
    """Every call goes to shard-1; the session lives on shard-2 (its ring owner)."""
    shards = [fleet.start("shard-1"), fleet.start("shard-2")]
    ring = await publish_ring(redis_url, shards)
    name = ids_owned_by(ring, "shard-2", 1, "w")[0]
    api = Waha(http, shards[0].url)
    config = {"metadata": {"user.id": "42"}, "webhooks": [{"url": "http://127.0.0.1:9/h"}]}
    code, body, _ = await api.waha("POST", "/api/sessions", {"name": name, "config": config})
    assert code == 201 and body["name"] == name and body["status"] == "STARTING", body
    assert body["config"]["metadata"] == {"user.id": "42"}
    assert body["config"]["webhooks"][0]["url"] == "http://127.0.0.1:9/h"

    info = await wait_waha(api, name, "SCAN_QR_CODE")
    assert info["assignedWorker"] == "shard-2"
    code, raw, _ = await api.waha("GET", f"/api/{name}/auth/qr?format=raw")
    assert code == 200 and raw["value"].startswith("2@"), raw
    code, image, headers = await api.waha("GET", f"/api/{name}/auth/qr")
    assert code == 200 and headers["Content-Type"] == "image/png" and image[:4] == b"\x89PNG"
    code, b64, _ = await api.waha(
        "GET", f"/api/{name}/auth/qr", None, {"Accept": "application/json"}
    )
    assert code == 200 and b64["mimetype"] == "image/png" and b64["data"]

    await scan(http, site_url, raw["value"], "4915100000042")
    info = await wait_waha(api, name, "WORKING")
    assert info["me"] == {"id": "4915100000042@c.us", "pushName": ""}
    code, me, _ = await api.waha("GET", f"/api/sessions/{name}/me")
    assert (code, me["id"]) == (200, "4915100000042@c.us")

    sent = {"session": name, "chatId": "4915100000099@c.us", "text": "hallo"}
    code, message, _ = await api.waha("POST", "/api/sendText", sent)
    assert code == 201 and message["fromMe"] is True and message["body"] == "hallo", message
    assert message["id"].startswith("true_4915100000099@c.us_")
    code, shot, _ = await api.waha("GET", f"/api/screenshot?session={name}")
    assert code == 200 and shot[:4] == b"\x89PNG"

    code, body, _ = await api.waha("POST", f"/api/sessions/{name}/stop")
    assert (code, body["status"]) == (200, "STOPPED"), body
    code, body, _ = await api.waha("POST", f"/api/sessions/{name}/start")
    assert code == 201 and body["status"] in ("STARTING", "WORKING"), body
    await wait_waha(api, name, "WORKING")  # restored from its snapshot: no new scan
    code, body, _ = await api.waha("POST", f"/api/sessions/{name}/logout")
    assert code == 201, body
    await wait_waha(api, name, "SCAN_QR_CODE")
    code, _, _ = await api.waha("DELETE", f"/api/sessions/{name}")
    assert code == 200
    code, _, _ = await api.waha("GET", f"/api/sessions/{name}")
    assert code == 404


async def wait_waha(api: Waha, name: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        code, last, _ = await api.waha("GET", f"/api/sessions/{name}")
        if code == 200 and last["status"] == status:
            return dict(last)
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{name} did not reach {status}; last: {last}")


async def test_the_live_socket_streams_events_as_webhooks_get_them(
    fleet: ShardFleet, http: aiohttp.ClientSession
) -> None:
    shard = fleet.start("shard-1")
    api = Waha(http, shard.url)
    url = f"{shard.url}/waha/ws?session=Live&events=session.status&x-api-key={API_KEY}"
    async with http.get(f"{shard.url}/waha/ws?events=nope&x-api-key={API_KEY}") as resp:
        assert resp.status == 400 and "nope" in (await resp.json())["message"]
    async with http.ws_connect(url) as socket:
        code, _, _ = await api.waha("POST", "/api/sessions", {"name": "other"})
        assert code == 201
        code, _, _ = await api.waha("POST", "/api/sessions", {"name": "Live"})
        assert code == 201
        got = [await socket.receive_json(timeout=30) for _ in range(2)]
    assert [(e["session"], e["event"], e["payload"]["status"]) for e in got] == [
        ("Live", "session.status", "STARTING"),
        ("Live", "session.status", "SCAN_QR_CODE"),
    ]
    assert got[0]["id"].startswith("evt_") and got[0]["engine"] == "chatscale"
