"""The deliverer against real Redis and real receivers (events written by the registry's own
status script, no browser: this is about delivery): a receiver that is down holds up only
itself; a deliverer that loses the leadership stops sending, and the next one finishes."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from shard.registry import Registry
from support.procs import eventually
from support.receiver import KEY, Receiver, delivering, serving

from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import Webhook

KEYS = Keys("cs:")
CHANGES = ("SCAN_QR_CODE", "WORKING", "FAILED", "STOPPED")
SESSIONS = ("a", "b", "c", "d")


def hook(receiver: Receiver, **retries: float) -> Webhook:
    return Webhook.model_validate(
        {"url": receiver.url, "hmac": {"key": KEY}, "retries": {"policy": "constant", **retries}}
    )


async def write_changes(client: aioredis.Redis) -> None:
    """Four sessions, four status changes each, interleaved, as shards would write them."""
    registry = Registry(client, KEYS, "shard-1", capacity=10)
    for sid in SESSIONS:
        await registry.claim(sid)
    for status in CHANGES:
        for sid in SESSIONS:
            assert await registry.update(sid, 1, {"status": status})


def in_order(receiver: Receiver) -> bool:
    return all(receiver.statuses(sid) == list(CHANGES) for sid in SESSIONS)


async def test_a_receiver_that_is_down_holds_up_only_itself(aredis: aioredis.Redis) -> None:
    async with serving() as down, serving() as up:
        down.up = False
        hooks = [hook(down, delay_seconds=0.5, attempts=100), hook(up)]
        async with delivering(aredis, hooks):
            await write_changes(aredis)
            await eventually(lambda: in_order(up), 5, "every event at the receiver that is up")
            assert not down.got and down.refused > 0
            assert await aredis.xlen(KEYS.outbox) == len(SESSIONS) * len(CHANGES), "kept for down"
            down.up = True
            await eventually(lambda: in_order(down), 10, "the rest, once it is back")
            await eventually(lambda: len(up.got) == 16, 1, "nothing sent twice to the one up")


async def test_a_deposed_deliverer_stops_and_the_next_leader_finishes(
    aredis: aioredis.Redis,
) -> None:
    async with serving() as receiver:
        receiver.up = False
        leads = {"old": True}
        hooks = [hook(receiver, delay_seconds=0.2, attempts=100)]
        async with delivering(aredis, hooks, lambda: leads["old"]):
            await write_changes(aredis)
            await eventually(lambda: receiver.refused >= 4, 5, "attempts while it leads")
            leads["old"] = False  # the lock went to another instance
            await asyncio.sleep(0.5)  # any attempt under way ends
            tried = receiver.refused
            await asyncio.sleep(1.5)
            assert receiver.refused == tried, "a deposed deliverer sends nothing more"
            receiver.up = True
            async with delivering(aredis, hooks):  # the new leader
                await eventually(lambda: in_order(receiver), 10, "every event, in order")


async def test_garbage_in_the_outbox_is_dropped_and_reported_and_the_rest_delivered(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries no shard wrote (missing fields, bad JSON, JSON of the wrong shape, damaged stored
    receivers) are dropped with a warning; the events around them still arrive, in order."""
    garbage: list[dict[str, str]] = [
        {"nothing": "here"},
        {"event": "session.status", "session": "a", "payload": "{not json"},
        {"event": "session.status", "session": "a", "payload": "[1, 2]", "metadata": "7"},
        {"event": "session.status", "session": "zz", "payload": "{}", "hooks": "{oops"},
        {"event": "session.status", "session": "a", "payload": "null", "me": "x" * 10_000},
    ]
    async with serving() as receiver, delivering(aredis, [hook(receiver)]):
        with caplog.at_level(logging.WARNING):
            for fields in garbage:
                await aredis.xadd(KEYS.outbox, fields)
            await write_changes(aredis)
            await eventually(lambda: in_order(receiver), 10, "every real event, in order")
            # Damaged stored receivers cost the event only those: the fleet's still get it.
            await eventually(lambda: len(receiver.messages("zz", "session.status")) == 1, 5, "zz")
    dropped = [r.getMessage() for r in caplog.records if "is not an event" in r.getMessage()]
    assert len(dropped) == 4, caplog.text
