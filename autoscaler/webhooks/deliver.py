"""Delivers the outbox's events to the configured webhooks: at least once, in order per session
and receiver, off every browser's path (docs/webhooks.md).

One reader (on the leader) takes events from the outbox through a consumer group, so an event is
only removed once it was delivered or dead-lettered; entries a crash or a lost leadership left
unacknowledged are read again first. Each event goes to one of LANES queues chosen by its
session, and each lane delivers its events one after the other: a session's events stay in
order, and a receiver that is down holds up only the lanes it has events in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from autoscaler.metrics import Metrics
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import Event, Webhook, headers

log = logging.getLogger(__name__)

GROUP = "webhooks"
CONSUMER = "deliverer"
"""One consumer name, whichever instance leads: a new leader finds its predecessor's
unacknowledged events as its own, and delivers them first."""
LANES = 16
LANE_DEPTH = 64
BATCH = 100
DEAD_MAXLEN = 10_000


@dataclass
class Stats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds from the event's write to its delivery, the newest 1,000."""

    def took(self, seconds: float) -> None:
        self.latencies.append(seconds)
        del self.latencies[:-1000]


class Deliverer:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        webhooks: Callable[[], Sequence[Webhook]],
        leading: Callable[[], bool],
        metrics: Metrics,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self.redis = client
        self.keys = keys
        self.webhooks = webhooks
        """The receivers as the running config has them (a reload applies to the next event)."""
        self.leading = leading
        self.metrics = metrics
        self.sleep = sleep
        self.stats = Stats()
        self._inflight: set[str] = set()
        self._lanes: list[asyncio.Queue[Event]] = [asyncio.Queue(LANE_DEPTH) for _ in range(LANES)]

    async def run(self) -> None:
        """Until cancelled: read, hand to lanes, deliver. Redis errors wait and retry."""
        async with aiohttp.ClientSession() as http:
            lanes = [asyncio.create_task(self._lane(q, http)) for q in self._lanes]
            try:
                await self._read_forever()
            finally:
                for task in lanes:
                    task.cancel()
                await asyncio.gather(*lanes, return_exceptions=True)

    async def _read_forever(self) -> None:
        cursor: str | None = "0"  # our own unacknowledged events first; None: new ones
        while True:
            if not self.leading():
                cursor = "0"
                await asyncio.sleep(1)
                continue
            try:
                await self._ensure_group()
                cursor = await self._read(cursor)
            except (RedisError, OSError) as exc:
                log.warning("webhooks: outbox unreadable: %s", exc)
                cursor = "0"
                await asyncio.sleep(1)

    async def _ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(self.keys.outbox, GROUP, id="0", mkstream=True)

    async def _read(self, cursor: str | None) -> str | None:
        start = cursor if cursor is not None else ">"
        block = None if cursor is not None else 1000
        reply = await self.redis.xreadgroup(
            GROUP, CONSUMER, {self.keys.outbox: start}, count=BATCH, block=block
        )
        entries = reply[0][1] if reply else []
        if cursor is not None and not entries:
            return None  # the backlog is done: from now on, new events
        for stream_id, fields in entries:
            await self._dispatch(stream_id, fields)
        if cursor is not None:
            return str(entries[-1][0])
        return None

    async def _dispatch(self, stream_id: str, fields: dict[str, str] | None) -> None:
        if stream_id in self._inflight:
            return  # read again from the backlog while a lane still has it
        if not fields:  # trimmed away before it was delivered
            await self._done(stream_id)
            return
        try:
            event = Event.parse(stream_id, fields)
        except ValueError as exc:
            log.warning("webhooks: dropped: %s", exc)
            await self._done(stream_id)
            return
        self._inflight.add(stream_id)
        lane = int.from_bytes(hashlib.blake2b(event.session.encode()).digest()[:4], "big")
        await self._lanes[lane % LANES].put(event)

    async def _lane(self, queue: asyncio.Queue[Event], http: aiohttp.ClientSession) -> None:
        while True:
            event = await queue.get()
            try:
                for webhook in self.webhooks():
                    if webhook.wants(event.event) and event.only_url in ("", webhook.url):
                        await self._send(http, webhook, event)
                await self._done(event.stream_id)
            except (RedisError, OSError) as exc:
                # Not acknowledged: it is read again (and sent again: at least once).
                log.warning("webhooks: could not finish %s: %s", event.stream_id, exc)
            finally:
                self._inflight.discard(event.stream_id)

    async def _send(self, http: aiohttp.ClientSession, webhook: Webhook, event: Event) -> None:
        """Deliver to one receiver, retrying by its policy; dead-letter after the last try."""
        body = event.body()
        sent_headers = headers(webhook, event, body)
        timeout = aiohttp.ClientTimeout(total=webhook.timeout_seconds)
        for attempt in range(1, webhook.retries.attempts + 1):
            error = await _post(http, webhook.url, body, sent_headers, timeout)
            if error is None:
                self.stats.delivered += 1
                self.stats.took(time.time() - event.timestamp_ms / 1000)
                self.metrics.webhook_deliveries.labels("delivered").inc()
                self.metrics.webhook_latency.observe(self.stats.latencies[-1])
                return
            self.stats.last_error, self.stats.last_error_at = f"{webhook.url}: {error}", time.time()
            if attempt < webhook.retries.attempts:
                self.stats.retried += 1
                self.metrics.webhook_deliveries.labels("retried").inc()
                await self.sleep(webhook.retries.delay(attempt))
        log.warning(
            "webhooks: %s to %s failed %d times, dead-lettered",
            event.id,
            webhook.url,
            webhook.retries.attempts,
        )
        await self._dead_letter(webhook, event, self.stats.last_error, webhook.retries.attempts)

    async def _dead_letter(self, webhook: Webhook, event: Event, error: str, tries: int) -> None:
        fields = {
            "event": event.event,
            "session": event.session,
            "payload": _json(event.payload),
            "metadata": _json(event.metadata),
            "origin": event.origin or event.stream_id,
            "url": webhook.url,
            "error": error,
            "attempts": str(tries),
        }
        await self.redis.xadd(self.keys.dead_letters, fields, maxlen=DEAD_MAXLEN, approximate=True)
        self.stats.dead += 1
        self.metrics.webhook_deliveries.labels("dead").inc()

    async def _done(self, stream_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.outbox, GROUP, stream_id)
            pipe.xdel(self.keys.outbox, stream_id)
            await pipe.execute()


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    sent_headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
) -> str | None:
    """One attempt; None when the receiver took it (any 2xx), else what went wrong."""
    try:
        async with http.post(url, data=body, headers=sent_headers, timeout=timeout) as resp:
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
