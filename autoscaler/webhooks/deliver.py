"""Delivers the outbox's events to the configured webhooks: at least once, in order per session
and receiver, off every browser's path (docs/webhooks.md).

One reader (on the leader) takes events from the outbox through a consumer group, so an event is
only removed once every receiver took it or it was dead-lettered for them; entries a crash or a
lost leadership left unacknowledged are read again first. Each receiver has LANES queues; an
event goes to the lane its session hashes to, and a lane delivers one event at a time: a
session's events reach each receiver in order, a receiver that is down holds up only its own
lanes, and the others go on. The reader pauses while MAX_INFLIGHT events are unfinished, which
bounds memory when a receiver stays down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from autoscaler.metrics import Metrics
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import Event, Webhook, headers, hooks_text

log = logging.getLogger(__name__)

GROUP = "webhooks"
CONSUMER = "deliverer"
"""One consumer name, whichever instance leads: a new leader finds its predecessor's
unacknowledged events as its own, and delivers them first."""
LANES = 16
BATCH = 100
MAX_INFLIGHT = 10_000
DEAD_MAXLEN = 10_000
REDIS_RETRY = 1.0
IDLE_POLL = 0.05
"""Seconds between two reads of an empty outbox (20 cheap reads a second, on the leader)."""


class _Deposed(Exception):
    """This instance no longer leads: what it has not finished is left to the next leader."""


@dataclass
class Stats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    """Seconds from the event's write to its delivery, the newest 1,000."""

    def failed(self, error: str) -> None:
        self.last_error, self.last_error_at = error, time.time()


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
        self._remaining: dict[str, int] = {}
        """Unfinished events (stream id) -> receivers that have yet to take or refuse them."""
        self._lanes: dict[tuple[str, int], asyncio.Queue[tuple[Event, Webhook]]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._deposed = False
        """A lane saw leadership lost: the reader stops every lane before reading again."""
        self._salt = ""
        self._group_ready = False

    async def run(self) -> None:
        """Until cancelled: read, hand to lanes, deliver. Redis errors wait and retry."""
        async with aiohttp.ClientSession() as http:
            self._http = http
            try:
                await self._read_forever()
            finally:
                await self._stop_lanes()

    async def _read_forever(self) -> None:
        cursor: str | None = "0"  # our own unacknowledged events first; None: new ones
        while True:
            if self._deposed or not self.leading():
                await self._stop_lanes()  # deposed: the next leader sends what is unfinished
                self._deposed, cursor = False, "0"
                if not self.leading():
                    await asyncio.sleep(1)
                continue
            if len(self._remaining) >= MAX_INFLIGHT:
                await asyncio.sleep(0.1)
                continue
            try:
                await self._ensure_group()
                cursor = await self._read(cursor)
            except (RedisError, OSError) as exc:
                log.warning("webhooks: outbox unreadable: %s", exc)
                cursor, self._group_ready = "0", False  # e.g. NOGROUP after a flush
                await asyncio.sleep(REDIS_RETRY)

    async def _stop_lanes(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers, self._lanes, self._remaining = [], {}, {}

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        await self.redis.set(self.keys.outbox_salt, secrets.token_hex(8), nx=True)
        self._salt = str(await self.redis.get(self.keys.outbox_salt))
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(self.keys.outbox, GROUP, id="0", mkstream=True)
        self._group_ready = True

    async def _read(self, cursor: str | None) -> str | None:
        start = cursor if cursor is not None else ">"
        # No BLOCK: a task cancelled inside a blocking read could hang the daemon's shutdown
        # (seen once in CI); an empty read waits in asyncio.sleep instead, a clean stop point.
        reply = await self.redis.xreadgroup(GROUP, CONSUMER, {self.keys.outbox: start}, count=BATCH)
        entries = reply[0][1] if reply else []
        if cursor is None and not entries:
            await asyncio.sleep(IDLE_POLL)
            return None
        if cursor is not None and not entries:
            return None  # the backlog is done: from now on, new events
        for stream_id, fields in entries:
            await self._dispatch(stream_id, fields)
        if cursor is not None:
            return str(entries[-1][0])
        return None

    async def _dispatch(self, stream_id: str, fields: dict[str, str] | None) -> None:
        if stream_id in self._remaining:
            return  # read again from the backlog while lanes still have it
        if not fields:  # trimmed away before it was delivered
            await self._ack(stream_id)
            return
        try:
            event = Event.parse(stream_id, fields, self._salt)
        except ValueError as exc:
            log.warning("webhooks: dropped: %s", exc)
            await self._ack(stream_id)
            return
        receivers = [*self.webhooks(), *event.hooks]  # the fleet's, then the session's own
        targets = [w for w in receivers if w.wants(event.event) and event.only_url in ("", w.url)]
        if not targets:  # nobody wants it (or a replay for a receiver no longer configured)
            await self._ack(stream_id)
            return
        self._remaining[stream_id] = len(targets)
        lane = int.from_bytes(hashlib.blake2b(event.session.encode()).digest()[:4], "big") % LANES
        for webhook in targets:
            self._lane(webhook.url, lane).put_nowait((event, webhook))

    def _lane(self, url: str, lane: int) -> asyncio.Queue[tuple[Event, Webhook]]:
        queue = self._lanes.get((url, lane))
        if queue is None:
            queue = self._lanes[(url, lane)] = asyncio.Queue()
            self._workers.append(asyncio.create_task(self._work(queue), name=f"webhook {url}"))
        return queue

    async def _work(self, queue: asyncio.Queue[tuple[Event, Webhook]]) -> None:
        """One receiver's lane: its events one after the other, each to the end."""
        while True:
            event, webhook = await queue.get()
            try:
                await self._send(webhook, event)
            except _Deposed:
                self._deposed = True  # the reader stops the lanes; the next leader sends it
                return
            await self._one_done(event.stream_id)

    async def _send(self, webhook: Webhook, event: Event) -> None:
        """Deliver to one receiver, retrying by its policy; dead-letter after the last try."""
        assert self._http is not None
        body = event.body()
        sent_headers = headers(webhook, event, body)
        timeout = aiohttp.ClientTimeout(total=webhook.timeout_seconds)
        last = ""
        for attempt in range(1, webhook.retries.attempts + 1):
            if not self.leading():
                raise _Deposed()
            error = await _post(self._http, webhook.url, body, sent_headers, timeout)
            if error is None:
                self.stats.delivered += 1
                took = time.time() - event.timestamp_ms / 1000
                self.stats.latencies.append(took)
                self.metrics.webhook_deliveries.labels("delivered").inc()
                self.metrics.webhook_latency.observe(took)
                return
            last = f"{webhook.url}: {error}"
            self.stats.failed(last)
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
        await self._until_written(lambda: self._dead_letter(webhook, event, last))

    async def _dead_letter(self, webhook: Webhook, event: Event, error: str) -> None:
        fields = {
            "event": event.event,
            "session": event.session,
            "payload": _json(event.payload),
            "metadata": _json(event.metadata),
            "origin": event.first_id,
            "url": webhook.url,
            # A session's own receiver is kept with its letter: a replay needs its settings.
            "hooks": hooks_text([webhook]) if webhook in event.hooks else "",
            "error": error,
            "attempts": str(webhook.retries.attempts),
            "me": event.me,
        }
        await self.redis.xadd(self.keys.dead_letters, fields, maxlen=DEAD_MAXLEN, approximate=True)
        self.stats.dead += 1
        self.metrics.webhook_deliveries.labels("dead").inc()

    async def _one_done(self, stream_id: str) -> None:
        left = self._remaining.get(stream_id, 0) - 1
        if left > 0:
            self._remaining[stream_id] = left
            return
        # The lane waits for the acknowledgement (Redis away: until it is back), so nothing
        # after this event in the lane can overtake it.
        await self._until_written(lambda: self._ack(stream_id))
        self._remaining.pop(stream_id, None)

    async def _until_written(self, write: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await write()
                return
            except (RedisError, OSError) as exc:
                log.warning("webhooks: Redis write failed, retrying: %s", exc)
                await asyncio.sleep(REDIS_RETRY)

    async def _ack(self, stream_id: str) -> None:
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
    """One attempt; None when the receiver took it (any 2xx), else what went wrong. Never
    raises: whatever fails (a bad header, a refused connection) is one failed attempt."""
    try:
        async with http.post(url, data=body, headers=sent_headers, timeout=timeout) as resp:
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
