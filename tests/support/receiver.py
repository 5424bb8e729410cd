"""A webhook receiver owned by a test: an aiohttp server that checks each request's signature
and keeps what it was sent; `up = False` makes it answer 503 (a receiver that is down)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from autoscaler.metrics import Metrics
from autoscaler.webhooks.deliver import Deliverer
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import Webhook
from support.procs import free_port

KEY = "hook-secret"
"""The HMAC key tests give their webhooks."""


@dataclass
class Receiver:
    """A webhook receiver: answers 200 while `up`, else 503; keeps what it was sent."""

    url: str
    up: bool = True
    got: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0

    def statuses(self, sid: str) -> list[str]:
        return [
            e["payload"]["status"]
            for e in self.got
            if e["session"] == sid and e["event"] == "session.status"
        ]

    def messages(self, sid: str, event: str) -> list[dict[str, Any]]:
        """Payloads of `event` (message, message.any, message.ack) for session `sid`."""
        return [e["payload"] for e in self.got if e["session"] == sid and e["event"] == event]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as state:
        yield state


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Receiver]:
    """A receiver on a free loopback port, for the block's duration."""
    port = free_port()
    state = Receiver(f"http://127.0.0.1:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        if not state.up:
            state.refused += 1
            return web.json_response({"down": True}, status=503)
        expected = hmac.new(KEY.encode(), raw, hashlib.sha512).hexdigest()
        assert request.headers["X-Webhook-Hmac"] == expected, "signature"
        event = json.loads(raw)
        assert request.headers["X-Webhook-Request-Id"] == event["id"]
        state.got.append(event)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield state
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def delivering(
    client: aioredis.Redis, hooks: Sequence[Webhook], leading: Callable[[], bool] = lambda: True
) -> AsyncIterator[Deliverer]:
    """The autoscaler's deliverer for `hooks`, running until the block ends (as the leader,
    unless `leading` says otherwise)."""
    deliverer = Deliverer(client, Keys("cs:"), lambda: hooks, leading, Metrics())
    task = asyncio.create_task(deliverer.run())
    try:
        yield deliverer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def delivering_to(redis_url: str, hooks: Sequence[Webhook]) -> AsyncIterator[Deliverer]:
    """`delivering` with a Redis client of its own, for `redis_url`."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with delivering(client, hooks) as deliverer:
            yield deliverer
    finally:
        await client.aclose()
