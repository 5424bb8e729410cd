"""API keys on a real shard: every route x {no key, wrong key, another tenant's key, own key,
admin key}; what a tenant may create; listings and the live socket limited to what a key may
see; keys made and revoked through the API; keys off. Grants are written to Redis as the
autoscaler publishes them (autoscaler/loop/auth.py, tested in tests/loop/test_auth.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.procs import eventually
from support.shards import API_KEY, Api, ShardFleet, publish_ring

from autoscaler.loop import auth
from chatscale_contract.auth import KEYS_OFF, KEYS_ON, Grant, key_hash
from chatscale_contract.config import Config
from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")
ADMIN, ACME, BETA = "admin-key-0123456789", "acme-key-0123456789", "beta-key-0123456789"
GRANTS = {
    ADMIN: Grant("ops", admin=True),
    ACME: Grant("acme", prefix="acme-"),
    BETA: Grant("beta", workspace="w-beta"),
}
WHO = {"none": None, "wrong": "wrong-key-0123456789", "other": BETA, "own": ACME, "admin": ADMIN}


async def publish(redis_url: str, mode: str = KEYS_ON) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.hset(KEYS.api_keys, mapping={key_hash(k): g.text() for k, g in GRANTS.items()})
    await client.set(KEYS.auth_mode, mode)
    await client.aclose()


class As:
    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http, self.base = http, base

    async def call(
        self, key: str | None, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"X-Api-Key": key} if key else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            content = r.headers.get("Content-Type", "")
            data = await r.json() if content.startswith("application/json") else await r.read()
            return r.status, data

    async def matrix(self, method: str, path: str, want: dict[str, int], body: Any = None) -> None:
        got = {who: (await self.call(key, method, path, body))[0] for who, key in WHO.items()}
        assert got == want, f"{method} {path}"


def expect(other: int, own: int, admin: int | None = None) -> dict[str, int]:
    return {"none": 401, "wrong": 401, "other": other, "own": own, "admin": admin or own}


async def test_every_route_for_every_kind_of_key(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    await publish(redis_url)
    shard = fleet.start("shard-1")
    api = As(http, shard.url)
    await eventually(lambda: _works(api, ACME), 10, "the shard to read the keys")
    assert (await api.call(ACME, "PUT", "/api/sessions/acme-1", {}))[0] == 201
    code, beta = await api.call(BETA, "PUT", "/api/sessions/beta-1", {})
    assert code == 201 and beta["workspace_id"] == "w-beta", "a tenant's sessions get its workspace"
    await Api(http, shard.url).wait_status("acme-1", "SCAN_QR_CODE")

    one = "/api/sessions/acme-1"
    await api.matrix("GET", one, expect(404, 200))
    await api.matrix("PUT", one, expect(404, 200), {})
    await api.matrix("GET", f"{one}/qr?format=raw", expect(404, 200))
    await api.matrix("GET", f"{one}/screenshot", expect(404, 200))
    await api.matrix("POST", f"{one}/messages", expect(404, 409), {"to": "49151", "text": "x"})
    await api.matrix("GET", "/admin/sessions", expect(403, 403, 200))
    await api.matrix("POST", "/admin/undrain", expect(403, 403, 200))
    await api.matrix("GET", "/api/keys", expect(403, 403, 200))
    waha = "/waha/api/sessions/acme-1"
    await api.matrix("GET", waha, expect(404, 200))
    await api.matrix("GET", f"{waha}/me", expect(404, 200))
    await api.matrix("GET", "/waha/api/screenshot?session=acme-1", expect(404, 200))
    send = {"session": "acme-1", "chatId": "4915100000001@c.us", "text": "x"}
    await api.matrix("POST", "/waha/api/sendText", expect(404, 409), send)
    for path in ("/health", "/metrics", "/openapi.json", "/waha/openapi.json"):
        assert (await api.call(None, "GET", path))[0] == 200, path
    code, body = await api.call(None, "GET", "/waha/api/sessions")
    assert (code, body) == (401, {"message": "Unauthorized", "statusCode": 401})

    # Listings show what the key may see.
    lists = {who: await api.call(key, "GET", "/api/sessions") for who, key in WHO.items()}
    ids = {
        who: sorted(s["id"] for s in body["sessions"])
        for who, (_, body) in lists.items()
        if isinstance(body, dict) and "sessions" in body
    }
    assert ids == {"other": ["beta-1"], "own": ["acme-1"], "admin": ["acme-1", "beta-1"]}
    code, body = await api.call(BETA, "GET", "/api/sessions?workspace_id=w-other")
    assert code == 403 and "w-beta" in body["error"]
    _, listed = await api.call(ACME, "GET", "/waha/api/sessions?all=true")
    assert [s["name"] for s in listed] == ["acme-1"]

    # What a tenant may create.
    code, body = await api.call(ACME, "PUT", "/api/sessions/zeta-1", {})
    assert code == 403 and "'acme-'" in body["error"]
    code, body = await api.call(ACME, "POST", "/waha/api/sessions", {"name": "zeta"})
    assert code == 403 and body["statusCode"] == 403
    code, body = await api.call(BETA, "PUT", "/api/sessions/b2", {"workspace_id": "w-gamma"})
    assert code == 403 and "w-beta" in body["error"]

    # Stop and delete: refused to others, allowed to the owner.
    await api.matrix("POST", f"{one}/stop", {**expect(404, 200), "admin": 200})
    assert (await api.call(BETA, "DELETE", one))[0] == 404
    assert (await api.call(ACME, "DELETE", one))[0] == 200


async def test_keys_made_and_revoked_through_the_api_and_keys_off(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    await publish(redis_url)
    api = As(http, fleet.start("shard-1").url)
    await eventually(lambda: _works(api, ADMIN), 10, "the shard to read the keys")
    tenant = {"name": "gamma", "scope": "tenant", "prefix": "g-"}
    assert (await api.call(ACME, "POST", "/api/keys", tenant))[0] == 403
    code, made = await api.call(ADMIN, "POST", "/api/keys", tenant)
    assert code == 201 and made["key"].startswith("cs_") and made["prefix"] == "g-"
    assert (await api.call(ADMIN, "POST", "/api/keys", tenant))[0] == 409, "names are unique"
    code, body = await api.call(ADMIN, "POST", "/api/keys", {"name": "x", "scope": "tenant"})
    assert code == 400 and "prefix or a workspace" in body["error"]
    await eventually(lambda: _works(api, made["key"]), 10, "the new key to count")
    code, listed = await api.call(ADMIN, "GET", "/api/keys")
    assert "gamma" in {k["name"] for k in listed["keys"]}
    assert all("key" not in k for k in listed["keys"]), "keys are never shown again"
    assert (await api.call(ADMIN, "DELETE", "/api/keys/gamma"))[0] == 200
    await eventually(lambda: _refused(api, made["key"]), 10, "the revoked key to stop counting")
    assert (await api.call(API_KEY, "GET", "/api/sessions"))[0] == 200, "the shard's own key"

    await publish(redis_url, KEYS_OFF)
    await eventually(lambda: _refused(api, None, want=200), 10, "keys off")


async def _works(api: As, key: str) -> bool:
    return (await api.call(key, "GET", "/api/sessions"))[0] == 200


async def _refused(api: As, key: str | None, want: int = 401) -> bool:
    return (await api.call(key, "GET", "/api/sessions"))[0] == want


async def test_a_keys_limits_answer_429(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    limited = "limited-key-0123456789"
    grant = Grant("limited", prefix="l-", creates_per_minute=2, sends_per_minute=1, max_sessions=3)
    capped = "capped-key-0123456789"
    cap = Grant("capped", prefix="c-", max_sessions=1)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    entries = {key_hash(limited): grant.text(), key_hash(capped): cap.text()}
    await client.hset(KEYS.api_keys, mapping=entries)
    await client.set(KEYS.auth_mode, KEYS_ON)
    await client.aclose()
    api = As(http, fleet.start("shard-1").url)
    await eventually(lambda: _works(api, limited), 10, "the shard to read the keys")
    late = time.time() % 60
    if late > 45:  # counted per minute: not across a minute's end
        await asyncio.sleep(61 - late)

    assert (await api.call(limited, "PUT", "/api/sessions/l-1", {}))[0] == 201
    assert (await api.call(limited, "PUT", "/api/sessions/l-1", {}))[0] == 200, "not a create"
    assert (await api.call(limited, "PUT", "/api/sessions/l-2", {}))[0] == 201
    async with http.put(
        f"{api.base}/api/sessions/l-3", json={}, headers={"X-Api-Key": limited}
    ) as resp:
        body = await resp.json()
        assert resp.status == 429 and "2 creates a minute" in body["error"], body
        assert 0 < int(resp.headers["Retry-After"]) <= 60
    send = {"to": "4915100000001", "text": "x"}
    assert (await api.call(limited, "POST", "/api/sessions/l-1/messages", send))[0] == 409
    code, body = await api.call(limited, "POST", "/api/sessions/l-1/messages", send)
    assert code == 429 and "1 sends a minute" in body["error"]

    assert (await api.call(capped, "PUT", "/api/sessions/c-1", {}))[0] == 201
    code, body = await api.call(capped, "PUT", "/api/sessions/c-2", {})
    assert code == 429 and "may hold 1 sessions" in body["error"]
    code, body = await api.call(capped, "POST", "/waha/api/sessions", {"name": "c-3"})
    assert code == 429 and body["statusCode"] == 429


async def test_shards_without_a_key_of_their_own_still_hand_sessions_over(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    """The shipped setup: no API_KEY anywhere, a generated admin key. A drain's hand-off (a
    shard's own call to another) goes with the fleet's internal key."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    key = await auth.publish(client, KEYS, Config())
    await client.aclose()
    assert key is not None
    one, two = fleet.start("shard-1", API_KEY=""), fleet.start("shard-2", API_KEY="")
    await publish_ring(redis_url, [one])
    api = Api(http, one.url, key=key)
    await eventually(lambda: _works(As(http, one.url), key), 10, "the shard to read the keys")
    assert (await api.call("PUT", "/api/sessions/h1", {}))[0] == 201
    await api.wait_status("h1", "SCAN_QR_CODE")
    await publish_ring(redis_url, [one, two])
    await asyncio.sleep(1.5)  # shards cache their view of the ring for a second
    assert (await api.call("POST", "/admin/drain"))[0] == 202
    await Api(http, two.url, key=key).wait_status("h1", "SCAN_QR_CODE", shard="shard-2")
