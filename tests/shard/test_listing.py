"""The fleet-wide session list: every shard answers `GET /api/sessions` with every session of the
fleet (from the registry), filtered and paged alike; `/admin/sessions` keeps the shard's own."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.shards import Api, ShardFleet, ids_owned_by, publish_ring, scan

from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")


async def listing(api: Api, query: str = "") -> dict[str, Any]:
    code, body, _ = await api.call("GET", f"/api/sessions{query}")
    assert code == 200, body
    assert isinstance(body, dict)
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [s["id"] for s in body["sessions"]]


async def test_every_shard_lists_the_whole_fleet(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str, site_url: str
) -> None:
    shards = [fleet.start("shard-1"), fleet.start("shard-2")]
    ring = await publish_ring(redis_url, shards)
    apis = [Api(http, s.url) for s in shards]
    ones, twos = (ids_owned_by(ring, s.shard_id, 2, "s") for s in shards)
    made = [ones[0], twos[0], ones[1], twos[1]]  # created in this order, in workspaces:
    workspace = dict(zip(made, ("w1", "w2", "w1", "w2"), strict=True))
    for n, sid in enumerate(made):
        body = {"workspace_id": workspace[sid]}
        code, answer, _ = await apis[n % 2].call("PUT", f"/api/sessions/{sid}", body)
        assert code == 201, answer
    for sid in made:
        await apis[0].wait_status(sid, "SCAN_QR_CODE")
    _, qr, _ = await apis[0].call("GET", f"/api/sessions/{twos[1]}/qr?format=raw")
    await scan(http, site_url, qr["qr"], "4915100000003")
    await apis[0].wait_status(twos[1], "WORKING")

    first, second = await listing(apis[0]), await listing(apis[1])
    assert first["shard"] == "shard-1" and second["shard"] == "shard-2"
    assert {k: v for k, v in first.items() if k != "shard"} == {
        k: v for k, v in second.items() if k != "shard"
    }, "the same list whichever shard answers"
    assert ids(first) == made, "oldest first"
    assert (first["total"], first["next_offset"]) == (4, None)
    owners = {s["id"]: s["shard"] for s in first["sessions"]}
    assert owners == {
        ones[0]: "shard-1",
        ones[1]: "shard-1",
        twos[0]: "shard-2",
        twos[1]: "shard-2",
    }
    own = (await apis[0].call("GET", "/admin/sessions"))[1]
    assert sorted(ids(own)) == sorted(ones), "the shard's own open sessions"

    assert ids(await listing(apis[1], "?status=WORKING")) == [twos[1]]
    assert ids(await listing(apis[1], "?status=WORKING,STARTING&workspace_id=w1")) == []
    assert ids(await listing(apis[0], "?status=SCAN_QR_CODE&workspace_id=w2")) == [twos[0]]
    assert ids(await listing(apis[0], "?workspace_id=w1")) == [ones[0], ones[1]]
    page = await listing(apis[0], "?limit=3")
    assert (ids(page), page["total"], page["next_offset"]) == (made[:3], 4, 3)
    page = await listing(apis[1], "?limit=3&offset=3")
    assert (ids(page), page["next_offset"]) == (made[3:], None)

    code, body, _ = await apis[1].call("DELETE", f"/api/sessions/{ones[0]}")
    assert code == 200, body
    assert ids(await listing(apis[1])) == made[1:]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?status=RUNNING", "status: unknown RUNNING"),
        ("?limit=0", "limit must be a whole number from 1 to 1000"),
        ("?limit=5000", "limit must be a whole number from 1 to 1000"),
        ("?offset=-1", "offset must be a whole number 0 or more"),
        ("?page=2", "unknown query parameter(s): page"),
    ],
)
async def test_bad_listing_queries_are_named(
    fleet: ShardFleet, http: aiohttp.ClientSession, query: str, named: str
) -> None:
    api = Api(http, fleet.start("shard-1").url)
    code, body, _ = await api.call("GET", f"/api/sessions{query}")
    assert code == 400 and named in body["error"], body


async def test_records_older_than_the_list_are_added_once(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    # Records as a fleet from before the list wrote them: no index, no mark.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    for n, sid in enumerate(("old-b", "old-a")):
        record = {"owner": "", "token": "3", "status": "STOPPED", "created_at": str(1000.0 + n)}
        await client.hset(KEYS.session(sid), mapping=record)
    await client.hset(KEYS.snapshot("old-a"), mapping={"token": "3", "data": "x"})
    api = Api(http, fleet.start("shard-1").url)
    assert ids(await listing(api)) == ["old-b", "old-a"]
    assert await client.get(KEYS.sessions_indexed) == "1"
    # Once marked, nobody scans again: a record written by hand now is not picked up.
    await client.hset(KEYS.session("late"), mapping={"created_at": "5.0", "status": "STOPPED"})
    api2 = Api(http, fleet.start("shard-2").url)
    assert ids(await listing(api2)) == ["old-b", "old-a"]
    await client.aclose()
