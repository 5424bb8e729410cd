"""Several real shards on one Redis: capacity, races, fencing, forwarding, drain, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from shard.registry import OwnedElsewhere, Registry
from support.procs import start_redis, stop, wait_for
from support.shards import Api, ShardFleet, ShardProc, ids_owned_by, publish_ring, scan, site_state

from chatscale_contract import proctree
from chatscale_contract.keys import Keys

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")


async def working(api: Api, http: aiohttp.ClientSession, site: str, sid: str) -> None:
    """Create and log in `sid` through `api` (requests reach the owner wherever it is)."""
    code, body, _ = await api.call("PUT", f"/api/sessions/{sid}", {})
    assert code in (200, 201), body
    await api.wait_status(sid, "SCAN_QR_CODE")
    _, qr, _ = await api.call("GET", f"/api/sessions/{sid}/qr?format=raw")
    await scan(http, site, qr["qr"], "4915100000009")
    await api.wait_status(sid, "WORKING")


async def test_capacity_refuses_the_next_session_and_leaks_nothing(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    shard = fleet.start("shard-1", MAX_SESSIONS="3")
    api = Api(http, shard.url)
    for sid in ("a1", "a2", "a3"):
        code, _, _ = await api.call("PUT", f"/api/sessions/{sid}", {})
        assert code == 201
    code, body, headers = await api.call("PUT", "/api/sessions/a4", {})
    assert code == 503 and headers["Retry-After"] == "5" and "no shard has room" in body["error"]
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    assert await client.smembers(KEYS.shard_sessions("shard-1")) == {"a1", "a2", "a3"}
    assert await client.exists(KEYS.session("a4")) == 0
    assert await client.zrange(KEYS.pending, 0, -1) == ["a4"]
    deadline = time.monotonic() + 5
    while await client.hget(KEYS.shard("shard-1"), "state") != "full":
        assert time.monotonic() < deadline, "the heartbeat never reported full"
        await asyncio.sleep(0.2)
    await client.aclose()
    _, listing, _ = await api.call("GET", "/api/sessions")
    assert len(listing["sessions"]) == 3


async def test_a_create_passed_to_a_shard_full_since_its_heartbeat_goes_to_the_next(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    """Placement goes by heartbeats; shard-2 fills up between two of its (slow) beats, so
    shard-1 passes a create to it that it cannot take: shard-1 then places it elsewhere."""
    first = fleet.start("shard-1", MAX_SESSIONS="3")
    second = fleet.start(
        "shard-2", MAX_SESSIONS="1", HEARTBEAT_INTERVAL="20", HEARTBEAT_TIMEOUT="60"
    )
    ring = await publish_ring(redis_url, [first, second])
    filler, sid = ids_owned_by(ring, "shard-2", 2, "late")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + 10
    while not await client.exists(KEYS.shard("shard-2")):
        assert time.monotonic() < deadline, "shard-2 never beat"
        await asyncio.sleep(0.1)
    code, body, _ = await Api(http, second.url).call("PUT", f"/api/sessions/{filler}", {})
    assert code == 201 and body["shard"] == "shard-2", body
    beat = await client.hgetall(KEYS.shard("shard-2"))
    await client.aclose()
    assert beat["state"] != "full", (
        f"shard-2 beat since it filled up; the test needs it not to: {beat}"
    )
    code, body, _ = await Api(http, first.url).call("PUT", f"/api/sessions/{sid}", {})
    assert code == 201 and body["shard"] == "shard-1", body


async def test_racing_creates_end_with_one_owner(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    shards = [fleet.start("shard-1"), fleet.start("shard-2")]
    await publish_ring(redis_url, shards)
    apis = [Api(http, s.url) for s in shards]
    for n in range(3):
        sid = f"race{n}"
        results = await asyncio.gather(*(a.call("PUT", f"/api/sessions/{sid}", {}) for a in apis))
        owners = {body["shard"] for code, body, _ in results if code in (200, 201)}
        assert len(owners) == 1, results
        listed = [
            s["id"] for a in apis for s in (await a.call("GET", "/admin/sessions"))[1]["sessions"]
        ]
        assert listed.count(sid) == 1, "one browser context per session across the fleet"


async def test_concurrent_creates_of_one_id_open_one_session(
    fleet: ShardFleet, http: aiohttp.ClientSession
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    results = await asyncio.gather(*(api.call("PUT", "/api/sessions/twin", {}) for _ in range(6)))
    assert {code for code, _, _ in results} <= {200, 201}
    assert sum(1 for code, _, _ in results if code == 201) == 1
    _, text, _ = await api.call("GET", "/metrics")
    assert b"chatscale_shard_sessions_started_total 1.0" in text, "one browser context, not six"


async def test_requests_reach_the_owner_through_any_shard(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    one, two = fleet.start("shard-1"), fleet.start("shard-2")
    ring = await publish_ring(redis_url, [one, two])
    sid = ids_owned_by(ring, "shard-2", 1, "fw")[0]
    code, body, headers = await Api(http, one.url).call("PUT", f"/api/sessions/{sid}", {})
    assert code == 201 and body["shard"] == "shard-2" and headers["X-Shard-Id"] == "shard-2"
    code, body, headers = await Api(http, one.url).call("GET", f"/api/sessions/{sid}")
    assert code == 200 and headers["X-Shard-Id"] == "shard-2"


async def test_full_ring_owner_places_on_next_shard(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    one, two = fleet.start("shard-1", MAX_SESSIONS="1"), fleet.start("shard-2")
    ring = await publish_ring(redis_url, [one, two])
    first, second = ids_owned_by(ring, "shard-1", 2, "ov")
    api = Api(http, one.url)
    assert (await api.call("PUT", f"/api/sessions/{first}", {}))[1]["shard"] == "shard-1"
    await asyncio.sleep(2.5)  # shard-1's next heartbeat says full
    code, body, _ = await api.call("PUT", f"/api/sessions/{second}", {})
    assert code == 201 and body["shard"] == "shard-2", body


async def test_stale_owner_closes_its_copy(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    await api.call("PUT", "/api/sessions/stale", {})
    await api.wait_status("stale", "SCAN_QR_CODE")
    # Another shard takes the session over as if shard-1's lease had lapsed: atomically drop
    # its heartbeat and claim.
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    thief = Registry(client, KEYS, "shard-9", 5)
    while True:  # shard-1 may renew its lease between the two calls; then try again
        await client.delete(KEYS.shard("shard-1"))
        with contextlib.suppress(OwnedElsewhere):
            await thief.claim("stale")
            break
    await client.aclose()

    async def gone() -> bool:
        _, listing, _ = await api.call("GET", "/admin/sessions")
        return not listing["sessions"]

    deadline = time.monotonic() + 10
    while not await gone():
        assert time.monotonic() < deadline, "stale copy still open"
        await asyncio.sleep(0.25)


async def test_drain_moves_sessions_without_a_new_scan(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str, site_url: str
) -> None:
    one, two = fleet.start("shard-1"), fleet.start("shard-2")
    await publish_ring(redis_url, [one])  # everything lands on shard-1 first
    api = Api(http, one.url)
    for sid in ("d1", "d2"):
        await working(api, http, site_url, sid)
    scans = len((await site_state(http, site_url))["sessions"])
    await publish_ring(redis_url, [one, two])
    code, body, _ = await api.call("POST", "/admin/drain")
    assert code == 202 and body["state"] == "draining"
    two_api = Api(http, two.url)
    for sid in ("d1", "d2"):
        await two_api.wait_status(sid, "WORKING", timeout=60, shard="shard-2")
    assert len((await site_state(http, site_url))["sessions"]) == scans, "no new scan"
    code, body, _ = await api.call("PUT", "/api/sessions/d3", {}, {"X-Chatscale-Forwarded-By": "t"})
    assert code == 503 and "draining" in body["error"]
    recorded = one.processes()
    assert one.sigterm(timeout=30) == 0
    wait_for(lambda: not proctree.alive(recorded), 5, "no process of the stopped shard left")


async def test_a_delete_that_waited_for_a_hand_off_deletes_the_session_where_it_went(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str, site_url: str
) -> None:
    """The DELETE arrives while the drain holds the session (snapshot, close, release): when
    it gets the session the hand-off has released it, so it runs again against the new owner
    instead of answering 200 for a delete that changed nothing (CI saw it come back)."""
    one, two = fleet.start("shard-1"), fleet.start("shard-2")
    await publish_ring(redis_url, [one])
    api = Api(http, one.url)
    await working(api, http, site_url, "r1")
    await publish_ring(redis_url, [one, two])
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        saved = await client.hget(KEYS.snapshot("r1"), "saved_at")
        code, _, _ = await api.call("POST", "/admin/drain")
        assert code == 202
        # The hand-off's snapshot is written: it holds the session while it closes the page.
        deadline = time.monotonic() + 10
        while await client.hget(KEYS.snapshot("r1"), "saved_at") == saved:
            assert time.monotonic() < deadline, "the drain took no snapshot"
            await asyncio.sleep(0.005)
        code, body, _ = await api.call("DELETE", "/api/sessions/r1")
        assert code == 200, body
        for _ in range(20):  # long enough for the hand-off to have placed it on shard-2
            await asyncio.sleep(0.5)
            assert not await client.exists(KEYS.session("r1")), "deleted, but back"
            _, listing, _ = await Api(http, two.url).call("GET", "/admin/sessions")
            assert [v["id"] for v in listing["sessions"]] == [], "deleted, but open on shard-2"
    finally:
        await client.aclose()


async def test_sends_during_a_drain_are_held_not_refused(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str, site_url: str
) -> None:
    """While a session moves (snapshot, close, release, claim, reopen elsewhere) a send waits
    for it (HANDOFF_WAIT) instead of failing with 409, on the old shard and on the new one."""
    one, two = fleet.start("shard-1"), fleet.start("shard-2")
    await publish_ring(redis_url, [one])
    apis = [Api(http, one.url), Api(http, two.url)]
    await working(apis[0], http, site_url, "h1")
    await publish_ring(redis_url, [one, two])
    answers: list[tuple[int, str]] = []

    async def send(n: int) -> None:
        body = {"to": "4915100000077", "text": f"held {n}"}
        code, reply, _ = await apis[n % 2].call("POST", "/api/sessions/h1/messages", body)
        answers.append((code, str(reply)))

    code, _, _ = await apis[0].call("POST", "/admin/drain")
    assert code == 202
    sends = [asyncio.create_task(send(n)) for n in range(2)]
    for n in range(2, 40):  # every 0.25 s until the session is back on shard-2, and a bit after
        await asyncio.sleep(0.25)
        sends.append(asyncio.create_task(send(n)))
        _, body, _ = await apis[1].call("GET", "/api/sessions/h1")
        if body.get("shard") == "shard-2" and body.get("status") == "WORKING" and n > 30:
            break
    await asyncio.gather(*sends)
    failed = [a for a in answers if a[0] != 201]
    assert not failed, f"{len(failed)} of {len(answers)} sends failed: {failed[:3]}"
    await apis[1].wait_status("h1", "WORKING", shard="shard-2")


async def test_sends_for_sessions_waiting_their_turn_to_reopen_are_held(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    """A shard back after a SIGKILL reopens its sessions one at a time here
    (RESTORE_CONCURRENCY 1): a send for a session still waiting its turn is held until the
    session is back, not refused with 409 because it is STARTING."""
    first = fleet.start("shard-1")
    for sid in ("q1", "q2", "q3"):
        await working(Api(http, first.url), http, site_url, sid)
    first.sigkill()
    again = fleet.start("shard-1", RESTORE_CONCURRENCY="1")
    api = Api(http, again.url)
    body = {"to": "4915100000078", "text": "while it reopens"}
    answers = await asyncio.gather(
        *(api.call("POST", f"/api/sessions/{sid}/messages", body) for sid in ("q3", "q2", "q1"))
    )
    assert [(code, reply) for code, reply, _ in answers if code != 201] == []


async def test_sigterm_releases_sessions_for_others(
    fleet: ShardFleet, http: aiohttp.ClientSession, redis_url: str
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    await api.call("PUT", "/api/sessions/t1", {})
    await api.wait_status("t1", "SCAN_QR_CODE")
    recorded = shard.processes()
    started = time.monotonic()
    assert shard.sigterm(timeout=30) == 0
    assert time.monotonic() - started < 20
    wait_for(lambda: not proctree.alive(recorded), 5, "no process of the stopped shard left")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    assert await client.smembers(KEYS.orphans) == {"t1"}, "released for another shard to adopt"
    assert await client.hget(KEYS.session("t1"), "owner") == ""
    assert await client.exists(KEYS.shard("shard-1")) == 0, "heartbeat withdrawn on clean exit"
    await client.aclose()


async def test_browser_crash_restores_sessions(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str, redis_url: str
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    await working(api, http, site_url, "crash1")
    scans = len((await site_state(http, site_url))["sessions"])
    browser = main_chromium(shard)
    assert browser is not None
    os.kill(browser, signal.SIGKILL)
    wait_for(lambda: main_chromium(shard) not in (None, browser), 30, "a new chromium")
    await api.wait_status("crash1", "WORKING", timeout=60)
    assert len((await site_state(http, site_url))["sessions"]) == scans, "no new scan"


def main_chromium(shard: ShardProc) -> int | None:
    """The browser process (not a renderer, zygote or crashpad helper) of a shard."""
    for proc in shard.processes():
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        helper = any(a.startswith(b"--type=") for a in argv) or b"crashpad" in argv[0]
        if argv[0].endswith(b"chromium") and not helper:
            return proc.pid
    return None


async def test_shard_cut_off_from_redis_closes_its_sessions_before_the_lease_lapses(
    http: aiohttp.ClientSession, site_url: str, tmp_path: Path
) -> None:
    """Redis stops answering (SIGSTOP: connections hang, nothing fails fast). The shard must
    close its sessions itself before its lease (the heartbeat TTL, 4 s) could let another shard
    claim them, and reopen them once Redis answers again."""
    redis_proc, base = start_redis(tmp_path)
    fleet = ShardFleet(f"{base}/0", site_url, tmp_path)
    try:
        shard = fleet.start("shard-1")  # heartbeat every 1 s, lease (timeout) 4 s
        api = Api(http, shard.url)
        await api.call("PUT", "/api/sessions/cut", {})
        await api.wait_status("cut", "SCAN_QR_CODE")
        redis_proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while (await api.call("GET", "/admin/sessions"))[1]["sessions"]:
            assert time.monotonic() - stopped < 4.0, "still serving when the lease could lapse"
            await asyncio.sleep(0.1)
        redis_proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        while not (await api.call("GET", "/admin/sessions"))[1]["sessions"]:
            assert time.monotonic() - resumed < 30, "the session was not reopened"
            await asyncio.sleep(0.2)
        view = await api.wait_status("cut", "SCAN_QR_CODE", timeout=30)
        assert view["shard"] == "shard-1" and view["token"] >= 2, "reclaimed under a new token"
    finally:
        redis_proc.send_signal(signal.SIGCONT)
        fleet.stop_all()
        stop(redis_proc)
