"""Redis Sentinel: shards on a primary, a replica and three sentinels (real Redis, Chromium, the
stand-in site). The primary is SIGKILLed; the sentinels promote the replica; the shard carries
on against the new primary: its sessions stay WORKING with the same owner and token, never
closed, and new sessions start."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from support.procs import eventually, wait_for
from support.sentinel import sentinel_set
from support.shards import Api, ShardFleet, log_in

from autoscaler.redisconn import connect
from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")


async def test_a_primary_failover_loses_no_session(
    tmp_path: Path, site_url: str, http: aiohttp.ClientSession
) -> None:
    with sentinel_set(tmp_path / "redis") as sentinels:
        fleet = ShardFleet(sentinels.url, site_url, tmp_path)
        client = connect(sentinels.url, socket_timeout=5)
        try:
            # The lease (HEARTBEAT_TIMEOUT) outlasts a failover, as in production (20 s).
            shard = fleet.start("shard-1", HEARTBEAT_TIMEOUT="15")
            api = Api(http, shard.url)
            for sid in ("f1", "f2"):
                await log_in(api, http, site_url, sid, "4915100000011")
            before = {
                sid: await client.hmget(KEYS.session(sid), "owner", "token") for sid in ("f1", "f2")
            }

            old = sentinels.kill_primary()
            wait_for(lambda: sentinels.primary() != old, 30, "the sentinels to promote the replica")

            async def beating() -> bool:
                try:
                    return bool(await client.exists(KEYS.shard("shard-1")))
                except Exception:
                    return False

            await eventually(beating, 30, "the shard's heartbeat on the new primary")
            for sid, record in before.items():
                assert await client.hmget(KEYS.session(sid), "owner", "token") == record
                assert (await api.wait_status(sid, "WORKING"))["shard"] == "shard-1"
            code, body, _ = await api.call("PUT", "/api/sessions/f3", {})
            assert code == 201, body
            await api.wait_status("f3", "SCAN_QR_CODE")
            assert "closing all sessions" not in shard.log.read_text()
        finally:
            await client.aclose()
            fleet.stop_all()
