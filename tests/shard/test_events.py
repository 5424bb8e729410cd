"""Session events end to end: a real shard (Redis, Chromium, the stand-in site) writes each status
change and its event in one script; the autoscaler's deliverer (run here in-process) posts them
to a receiver in this test. At least once, in order per session, signed; nothing lost when the
receiver is down for 30 s or the shard is SIGKILLed; dead letters replayed."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.procs import eventually
from support.receiver import KEY, Receiver, delivering_to, serving
from support.shards import Api, ShardFleet, log_in

from autoscaler.webhooks.letters import dead_letters, replay
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import Webhook

pytestmark = [pytest.mark.browser]
KEYS = Keys("cs:")


async def log_in_w1(api: Api, http: aiohttp.ClientSession, site: str, sid: str) -> None:
    await log_in(api, http, site, sid, "4915100000042", {"workspace_id": "w1"})


def hook(url: str, **retries: Any) -> Webhook:
    return Webhook.model_validate({"url": url, "hmac": {"key": KEY}, "retries": retries})


async def test_status_events_reach_the_receiver_signed_and_in_order(
    fleet: ShardFleet,
    http: aiohttp.ClientSession,
    redis_url: str,
    site_url: str,
    receiver: Receiver,
) -> None:
    api = Api(http, fleet.start("shard-1").url)
    async with delivering_to(redis_url, [hook(receiver.url)]) as deliverer:
        await log_in_w1(api, http, site_url, "alice")
        code, body, _ = await api.call("POST", "/api/sessions/alice/stop")
        assert code == 200, body
        want = ["STARTING", "SCAN_QR_CODE", "WORKING", "STOPPED"]
        await eventually(lambda: receiver.statuses("alice") == want, 20, f"{want}")
        # The receiver has the last one; the deliverer counts it once it read the answer.
        await eventually(lambda: deliverer.stats.delivered == 4, 10, "the fourth answer counted")
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        deadline = time.monotonic() + 10
        while await client.xlen(KEYS.outbox):
            assert time.monotonic() < deadline, "delivered events leave the outbox"
            await asyncio.sleep(0.1)
        await client.aclose()
    first = receiver.got[0]
    assert first["event"] == "session.status" and first["engine"] == "chatscale"
    assert first["metadata"] == {"workspace_id": "w1", "account_id": ""}
    assert first["id"].startswith("evt_") and len({e["id"] for e in receiver.got}) == 4
    stamps = [e["timestamp"] for e in receiver.got]
    assert stamps == sorted(stamps) and abs(stamps[-1] / 1000 - time.time()) < 60


async def test_a_receiver_down_for_30_s_loses_nothing(
    fleet: ShardFleet,
    http: aiohttp.ClientSession,
    redis_url: str,
    site_url: str,
    receiver: Receiver,
) -> None:
    api = Api(http, fleet.start("shard-1").url)
    receiver.up = False
    went_down = time.monotonic()
    hooks = [hook(receiver.url, policy="constant", delay_seconds=1, attempts=100)]
    async with delivering_to(redis_url, hooks):
        for sid in ("s1", "s2", "s3"):
            await log_in_w1(api, http, site_url, sid)
        # The deliverer itself goes away mid-outage; the next one finds the backlog.
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - went_down)))
    assert receiver.refused > 0 and not receiver.got
    async with delivering_to(redis_url, hooks):
        receiver.up = True
        want = ["STARTING", "SCAN_QR_CODE", "WORKING"]
        await eventually(
            lambda: all(receiver.statuses(s)[-3:] == want for s in ("s1", "s2", "s3")), 30, "all"
        )
    for sid in ("s1", "s2", "s3"):
        seen = receiver.statuses(sid)
        # At least once: a repeat is possible, a loss or a reordering is not.
        assert [s for n, s in enumerate(seen) if n == 0 or seen[n - 1] != s] == want, seen


async def test_an_event_outlives_the_shard_that_wrote_it(
    fleet: ShardFleet,
    http: aiohttp.ClientSession,
    redis_url: str,
    site_url: str,
    receiver: Receiver,
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    await log_in_w1(api, http, site_url, "kept")  # no deliverer runs yet
    shard.proc.send_signal(signal.SIGKILL)  # right after the WORKING it reported
    shard.proc.wait(10)
    async with delivering_to(redis_url, [hook(receiver.url)]):
        want = ["STARTING", "SCAN_QR_CODE", "WORKING"]
        await eventually(lambda: receiver.statuses("kept") == want, 20, f"{want}")


async def test_dead_letters_are_kept_and_replayed(
    fleet: ShardFleet,
    http: aiohttp.ClientSession,
    redis_url: str,
    receiver: Receiver,
) -> None:
    api = Api(http, fleet.start("shard-1").url)
    receiver.up = False
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    hooks = [hook(receiver.url, policy="constant", delay_seconds=0.1, attempts=2)]
    async with delivering_to(redis_url, hooks) as deliverer:
        code, body, _ = await api.call("PUT", "/api/sessions/lost", {})
        assert code == 201, body
        await api.wait_status("lost", "SCAN_QR_CODE")
        await eventually(lambda: deliverer.stats.dead == 2, 20, "two dead letters")
        dead = await dead_letters(client, KEYS)
        assert dead["total"] == 2 and receiver.refused == 4
        letter = dead["letters"][-1]  # the oldest: STARTING
        assert (letter["session"], letter["url"], letter["attempts"]) == ("lost", receiver.url, "2")
        assert "HTTP 503" in letter["error"]
        receiver.up = True
        assert await replay(client, KEYS, letter["id"], {receiver.url}) == (1, [])
        await eventually(lambda: receiver.statuses("lost") == ["STARTING"], 20, "the replayed one")
        assert await replay(client, KEYS, None, {receiver.url}) == (1, [])
        await eventually(
            lambda: receiver.statuses("lost") == ["STARTING", "SCAN_QR_CODE"], 20, "all"
        )
    assert (await dead_letters(client, KEYS))["total"] == 0
    await client.aclose()


@pytest.fixture
def one_shard(fleet: ShardFleet, http: aiohttp.ClientSession) -> Api:
    """The API of one running shard."""
    return Api(http, fleet.start("shard-1").url)


async def test_a_sessions_own_receivers_get_its_events_only(
    one_shard: Api, redis_url: str, receiver: Receiver
) -> None:
    api = one_shard
    async with serving() as own:
        # As WAHA clients send them: camelCase, in the create.
        hooks = [{"url": own.url, "hmac": {"key": KEY}, "retries": {"delaySeconds": 0.2}}]
        code, body, _ = await api.call("PUT", "/api/sessions/mine", {"webhooks": hooks})
        assert code == 201, body
        code, body, _ = await api.call("PUT", "/api/sessions/theirs", {})
        assert code == 201, body
        wrong = {"webhooks": [{"url": own.url, "retries": {"attempts": 0}}]}
        code, body, _ = await api.call("PUT", "/api/sessions/bad", wrong)
        assert code == 400 and "webhooks[0].retries.attempts:" in body["error"], body
        async with delivering_to(redis_url, [hook(receiver.url)]):
            for sid in ("mine", "theirs"):
                await api.wait_status(sid, "SCAN_QR_CODE")
            want = ["STARTING", "SCAN_QR_CODE"]
            await eventually(lambda: own.statuses("mine") == want, 20, "the session's own receiver")
            await eventually(
                lambda: receiver.statuses("theirs") == want, 20, "the fleet's receiver"
            )
            await eventually(lambda: receiver.statuses("mine") == want, 20, "the fleet's, for mine")
        assert {e["session"] for e in own.got} == {"mine"}, "only its own session's events"
        view = (await api.call("GET", "/api/sessions/mine"))[1]
        assert "webhooks" not in view and KEY not in str(view), "the key is not shown"
