"""An unmodified third-party WAHA client (waha-py, from PyPI) drives the running system through
the front's WAHA port: real nginx, `autoscaler run` with two shard processes and real Chromium,
the stand-in site. Two sessions, one per shard, go create -> QR -> scan -> WORKING -> sendText ->
screenshot -> stop -> delete, and nginx's access log shows where each request went."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis
from shard.waha.names import session_id
from support.localsystem import LocalSystem, local_system
from support.scenario import API_KEY
from support.shards import scan
from waha import AsyncWahaClient

from chatscale_contract.keys import Keys
from chatscale_contract.ring import Ring

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEYS = Keys("cs:")


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.3)
    return found


async def ring_of(redis_url: str) -> Ring:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        published = json.loads(await client.get(KEYS.ring) or "{}")
    finally:
        await client.aclose()
    return Ring([(s["id"], s["addr"]) for s in published.get("shards", [])])


def one_name_per_shard(ring: Ring) -> dict[str, str]:
    """A mixed-case name owned by shard-1 and a lowercase one owned by shard-2."""
    names: dict[str, str] = {}
    for n in range(1000):
        for name in (f"Sales{n}", f"support{n}"):
            owner = ring.owner(session_id(name))
            if (
                owner is not None
                and owner not in names
                and name[0].isupper() == (owner == "shard-1")
            ):
                names[owner] = name
        if len(names) == 2:
            return names
    raise AssertionError("no names found")


async def test_an_unmodified_waha_client_runs_sessions_on_two_shards(
    tmp_path: Path, redis_url: str, site_url: str
) -> None:
    policy = {"min_shards": 2}
    with local_system(tmp_path, redis_url, site_url, "waha", policy=policy) as system:
        ring = await until(
            lambda: _two_shard_ring(redis_url), "a ring of two shards and the front serving it"
        )
        names = one_name_per_shard(ring)
        client = AsyncWahaClient(system.waha, api_key=API_KEY, timeout=120)
        live = f"{system.waha.replace('http', 'ws')}/ws?events=session.status&x-api-key={API_KEY}"
        async with aiohttp.ClientSession() as http, http.ws_connect(live) as socket:
            try:
                for shard, name in sorted(names.items()):
                    await lifecycle(client, http, site_url, name, shard)
            finally:
                await client.close()
            # The live socket, through nginx, saw both sessions' status changes.
            streamed: set[tuple[str, str]] = set()
            while not {(n, "WORKING") for n in names.values()} <= streamed:
                event = await socket.receive_json(timeout=30)
                streamed.add((event["session"], event["payload"]["status"]))
        await unauthorized(system)
        await asyncio.sleep(1.5)  # the access log is flushed every second
        assert_routed(system, ring, names)


async def _two_shard_ring(redis_url: str) -> Ring | None:
    ring = await ring_of(redis_url)
    return ring if len(ring.members) == 2 else None


async def lifecycle(
    client: AsyncWahaClient, http: aiohttp.ClientSession, site: str, name: str, shard: str
) -> None:
    webhook = {"url": "http://127.0.0.1:9/hook", "events": ["session.status"]}
    created = await client.sessions.a_create({"name": name, "config": {"webhooks": [webhook]}})
    assert created["name"] == name and created["status"] == "STARTING", created

    async def status_is(wanted: str) -> dict[str, Any] | None:
        info = await client.sessions.a_get(name)
        return dict(info) if info["status"] == wanted else None

    info = await until(lambda: status_is("SCAN_QR_CODE"), f"{name} showing a QR")
    assert (
        info["assignedWorker"] == shard and info["config"]["webhooks"][0]["url"] == webhook["url"]
    )
    qr = await client.auth.a_get_qr(name, params={"format": "raw"})
    image = await client.auth.a_get_qr(name)  # Accept: application/json -> {mimetype, data}
    assert image["mimetype"] == "image/png" and image["data"], image
    await scan(http, site, qr["value"], "4915100000077")
    info = await until(lambda: status_is("WORKING"), f"{name} logged in")
    assert info["me"]["id"] == "4915100000077@c.us"
    assert (await client.sessions.a_get_me(name))["id"] == "4915100000077@c.us"

    sent = await client.chatting.a_send_text(
        {"session": name, "chatId": "4915100000088@c.us", "text": f"hello from {name}"}
    )
    assert sent["fromMe"] is True and sent["body"] == f"hello from {name}", sent
    shot = await client.screenshot.a_screenshot(params={"session": name})
    assert shot["mimetype"] == "image/png" and len(shot["data"]) > 1000

    listed = {s["name"]: s for s in await client.sessions.a_list()}
    assert listed[name]["status"] == "WORKING"
    assert (await client.sessions.a_stop(name))["status"] == "STOPPED"
    assert name not in {s["name"] for s in await client.sessions.a_list()}
    assert name in {s["name"] for s in await client.sessions.a_list(params={"all": "true"})}
    await client.sessions.a_delete(name)
    with pytest.raises(httpx.HTTPStatusError) as gone:
        await client.sessions.a_get(name)
    assert gone.value.response.status_code == 404


async def unauthorized(system: LocalSystem) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{system.waha}/api/sessions")
        assert resp.status_code == 401 and resp.json() == {
            "message": "Unauthorized",
            "statusCode": 401,
        }
        resp = await http.post(
            f"{system.waha}/api/sendLocation", json={}, headers={"X-Api-Key": API_KEY}
        )
        assert resp.status_code == 501 and "/api/sendLocation" in resp.json()["message"]


def assert_routed(system: LocalSystem, ring: Ring, names: dict[str, str]) -> None:
    """nginx sent every request that names a lowercase session in its path or query straight to
    the session's shard: 0 misrouted. A name with capitals (its id has a hash nginx cannot
    compute) and sendText (the name is in the body) go to any shard, which forwards them."""
    lines = [line for line in system.access_log() if line.get("surface") == "waha"]
    addr = dict(ring.members)
    for shard, name in names.items():
        routed = [line for line in lines if line["session_id"] == session_id(name)]
        wrong = [line for line in routed if line["upstream_addr"] != addr[shard]]
        assert not wrong, f"misrouted (owner {shard} at {addr[shard]}): {wrong}"
        if name == name.lower():
            assert len(routed) >= 8, f"requests for {name} routed by its id: {routed}"
        else:
            assert not routed, "nginx cannot compute a hashed id"


async def test_a_waha_create_wakes_the_fleet_from_zero(
    tmp_path: Path, redis_url: str, site_url: str
) -> None:
    """No shard runs (min_shards 0): the create goes through the activator on the WAHA port as
    on the main one, and is answered once a shard started, with no retry by the client."""
    with local_system(tmp_path, redis_url, site_url, "wahawake") as system:
        system.wait_front_holds()
        assert system.status()["fleet"]["shards"] == 0
        client = AsyncWahaClient(system.waha, api_key=API_KEY, timeout=120)
        try:
            created = await client.sessions.a_create({"name": "Woken"})
            assert created["name"] == "Woken" and created["status"] == "STARTING", created
            info = await client.sessions.a_get("Woken")
            assert info["assignedWorker"] == "shard-1"
        finally:
            await client.close()
