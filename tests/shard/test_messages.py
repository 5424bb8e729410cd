"""Message events from real pages: the stand-in site delivers a contact's message to a logged-in
account and acks sent ones; the shard's whatsapp driver sees them appear in the page (a
MutationObserver, observer.js) and writes `message`, `message.any` and `message.ack` events,
which the autoscaler's deliverer (in-process here) posts, signed. Once each, also when the page
reloads, and not lost when the shard is SIGKILLed right after a message arrived."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from support.procs import eventually
from support.receiver import KEY, Receiver, delivering_to
from support.shards import Api, ShardFleet, log_in

from autoscaler.webhooks.deliver import Deliverer
from chatscale_contract.webhooks import Webhook

pytestmark = [pytest.mark.browser]
ME, CONTACT = "4915100000042", "4915100000001"


def delivering_all(redis_url: str, url: str) -> AbstractAsyncContextManager[Deliverer]:
    """The deliverer, posting every event to `url`."""
    hook = Webhook.model_validate({"url": url, "events": ["*"], "hmac": {"key": KEY}})
    return delivering_to(redis_url, [hook])


async def site(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_incoming_messages_and_acks_become_events_once(
    fleet: ShardFleet,
    http: aiohttp.ClientSession,
    redis_url: str,
    site_url: str,
    receiver: Receiver,
) -> None:
    api = Api(http, fleet.start("shard-1").url)
    async with delivering_all(redis_url, receiver.url):
        await log_in(api, http, site_url, "alice", ME)
        incoming = await site(
            http, f"{site_url}/api/incoming", {"to": ME, "from": CONTACT, "text": "hi there"}
        )
        await eventually(
            lambda: bool(receiver.messages("alice", "message")), 20, "the message event"
        )
        (message,) = receiver.messages("alice", "message")
        assert message["id"] == incoming["id"] and message["body"] == "hi there"
        assert (message["from"], message["to"], message["fromMe"]) == (
            f"{CONTACT}@c.us",
            f"{ME}@c.us",
            False,
        )
        event = next(e for e in receiver.got if e["event"] == "message")
        assert event["me"] == {"id": f"{ME}@c.us", "pushName": ""}

        code, sent, _ = await api.call(
            "POST", "/api/sessions/alice/messages", {"to": CONTACT, "text": "hello back"}
        )
        assert code == 201, sent
        mine = sent["message_id"]
        await eventually(lambda: len(receiver.messages("alice", "message.any")) == 2, 20, "any")
        outgoing = receiver.messages("alice", "message.any")[1]
        assert (outgoing["id"], outgoing["fromMe"], outgoing["ack"]) == (mine, True, 1)
        await site(http, f"{site_url}/api/ack", {"id": mine, "ack": "read"})
        await eventually(lambda: bool(receiver.messages("alice", "message.ack")), 20, "the ack")
        (ack,) = receiver.messages("alice", "message.ack")
        assert (ack["id"], ack["ack"], ack["ackName"]) == (mine, 3, "READ")

        # Stopped and started again: the page reloads and shows both messages again; they
        # are not announced twice.
        assert (await api.call("POST", "/api/sessions/alice/stop"))[0] == 200
        assert (await api.call("PUT", "/api/sessions/alice", {}))[0] in (200, 201)
        await api.wait_status("alice", "WORKING")
        later = await site(
            http, f"{site_url}/api/incoming", {"to": ME, "from": CONTACT, "text": "still there?"}
        )
        await eventually(lambda: len(receiver.messages("alice", "message")) == 2, 20, "2nd")
        # Its message.any goes out right after it: wait for that too, and a moment more, so a
        # duplicate would have arrived.
        await eventually(lambda: len(receiver.messages("alice", "message.any")) >= 3, 20, "any")
        await asyncio.sleep(1)
    assert [m["id"] for m in receiver.messages("alice", "message")] == [incoming["id"], later["id"]]
    assert [m["id"] for m in receiver.messages("alice", "message.any")] == [
        incoming["id"],
        mine,
        later["id"],
    ]
    assert len(receiver.messages("alice", "message.ack")) == 1
    assert not any(e["event"] == "message" for e in receiver.got if e["session"] != "alice")


async def test_a_message_outlives_a_shard_killed_as_it_arrived(
    fleet: ShardFleet,
    http: aiohttp.ClientSession,
    redis_url: str,
    site_url: str,
    receiver: Receiver,
) -> None:
    shard = fleet.start("shard-1")
    api = Api(http, shard.url)
    await log_in(api, http, site_url, "bob", ME)
    body = {"to": ME, "from": CONTACT, "text": "are you there?"}
    incoming = await site(http, f"{site_url}/api/incoming", body)
    shard.proc.send_signal(signal.SIGKILL)  # the page may or may not have reported it yet
    shard.proc.wait(10)
    fleet.start("shard-1")  # the same shard id comes back and restores its sessions
    async with delivering_all(redis_url, receiver.url):
        await eventually(lambda: bool(receiver.messages("bob", "message")), 60, "the message event")
    assert [m["id"] for m in receiver.messages("bob", "message")] == [incoming["id"]]
