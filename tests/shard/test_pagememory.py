"""PAGE_MEMORY_LIMIT_MB with a real shard, real Chromium and the stand-in site's leaking page:
the page past the limit is closed and reopened from its snapshot, alone; a page under it is
left as it is."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.shards import Api, ShardFleet, log_in, site_state

from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")
LIMIT_MB = 64
LEAKY, STEADY = "4915100000131", "4915100000132"
"""Phones no other test logs in: the stand-in grows every page of an account."""


async def grow(http: aiohttp.ClientSession, site: str, phone: str, megabytes: int) -> None:
    """The account's open page allocates `megabytes` more, once (fakesite POST /api/grow)."""
    async with http.post(f"{site}/api/grow", json={"phone": phone, "mb": megabytes}) as resp:
        assert resp.status == 200, await resp.text()


async def counter(api: Api, name: str) -> float:
    _, text, _ = await api.call("GET", "/metrics")
    found = re.search(rf"^{name}_total (\S+)$", text.decode(), re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def registry_token(redis: aioredis.Redis, sid: str) -> tuple[str, int]:
    record = await redis.hgetall(KEYS.session(sid))
    return record.get("owner", ""), int(record.get("token", 0))


async def test_only_the_page_past_the_limit_is_reopened_from_its_snapshot(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str, aredis: aioredis.Redis
) -> None:
    shard = fleet.start("shard-1", PAGE_MEMORY_LIMIT_MB=str(LIMIT_MB), PAGE_MEMORY_INTERVAL="1")
    api = Api(http, shard.url)
    beat = await aredis.hgetall(KEYS.shard("shard-1"))
    assert int(beat["baseline_bytes"]) > 0, "the heartbeat carries the browser's own memory"
    await log_in(api, http, site_url, "leaky", LEAKY)
    await log_in(api, http, site_url, "steady", STEADY)
    scans = len((await site_state(http, site_url))["sessions"])
    tokens = {sid: await registry_token(aredis, sid) for sid in ("leaky", "steady")}
    assert await counter(api, "chatscale_shard_sessions_restored") == 0, "both opened fresh"

    await grow(http, site_url, STEADY, LIMIT_MB // 4)  # under the limit: left alone
    await grow(http, site_url, LEAKY, LIMIT_MB * 3)
    deadline = time.monotonic() + 30
    while await counter(api, "chatscale_shard_page_memory_reopens") < 1:
        assert time.monotonic() < deadline, "the leaking page was not reopened"
        await asyncio.sleep(0.5)
    await api.wait_status("leaky", "WORKING", timeout=60)
    await asyncio.sleep(5)  # several more rounds: the reloaded page is small, steady stays under

    assert await counter(api, "chatscale_shard_page_memory_reopens") == 1
    assert await counter(api, "chatscale_shard_sessions_restored") == 1, "leaky alone, reopened"
    assert len((await site_state(http, site_url))["sessions"]) == scans, "no new scan"
    for sid in ("leaky", "steady"):
        view = (await api.call("GET", f"/api/sessions/{sid}"))[1]
        assert view["status"] == "WORKING" and view["shard"] == "shard-1"
        assert await registry_token(aredis, sid) == tokens[sid] == ("shard-1", view["token"]), (
            "reopened in place: same owner and fencing token in the registry"
        )
    log = shard.log.read_text()
    named = rf"session leaky: page holds \d+ MiB, over PAGE_MEMORY_LIMIT_MB={LIMIT_MB}"
    assert re.search(named, log), "a log line names the session and its figure"
    assert "session steady: page holds" not in log
    code, sent, _ = await api.call(
        "POST", "/api/sessions/leaky/messages", {"to": STEADY, "text": "after the reopen"}
    )
    assert code == 201, sent
