"""WAHA's live event stream: `GET /ws` (a WebSocket) sends every event as the webhook body, as it
is written to the outbox. Live only, as WAHA's is: events written while a client is away are for
webhooks (which are durable), not for the socket.

One reader per shard follows the outbox (XREAD, only while someone listens) and hands each event
to every open socket; a socket that cannot keep up is closed rather than let the queue grow.
Filters as WAHA has them: `?session=<name>|*` and `?events=<event>|*`, each repeatable or
comma-separated; the key may be given as `?x-api-key=` (browsers cannot set headers on a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import WSCloseCode, web
from redis.exceptions import RedisError

from chatscale_contract.auth import Grant
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import EVENTS, WAHA_ONLY_EVENTS, Event
from shard.access import grant_of
from shard.waha.names import BadName, session_id

log = logging.getLogger(__name__)
QUEUE = 1000
"""Events a socket may have waiting; past it the client is too slow and is closed."""
BLOCK_MS = 2000
"""XREAD's wait: below the shard's Redis socket timeout."""


class Hub:
    """Fans the outbox out to this shard's open sockets."""

    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self.queues: set[asyncio.Queue[Event]] = set()
        self._reader: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE)
        self.queues.add(queue)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._follow(), name="live events")
        try:
            yield queue
        finally:
            self.queues.discard(queue)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    async def _follow(self) -> None:
        last, salt = "$", ""
        while self.queues:
            try:
                # Set once per fleet (by the first deliverer): read until it is there.
                salt = salt or await self.redis.get(self.keys.outbox_salt) or ""
                rows = await self.redis.xread({self.keys.outbox: last}, block=BLOCK_MS, count=500)
            except RedisError as exc:
                log.warning("live events: outbox unreadable: %s", exc)
                await asyncio.sleep(1)
                continue
            for _, entries in rows:
                for stream_id, fields in entries:
                    last = stream_id
                    with contextlib.suppress(ValueError):
                        self._hand_out(Event.parse(stream_id, fields, salt))

    def _hand_out(self, event: Event) -> None:
        for queue in list(self.queues):
            if queue.full():  # its socket sees it was dropped and closes
                self.queues.discard(queue)
            else:
                queue.put_nowait(event)


HUB = web.AppKey("waha_live_hub", Hub)


def _wanted(request: web.Request, name: str) -> set[str]:
    values = {v.strip() for raw in request.query.getall(name, ["*"]) for v in raw.split(",")}
    return {v for v in values if v}


async def websocket(request: web.Request) -> web.StreamResponse:
    sessions, events = _wanted(request, "session"), _wanted(request, "events")
    unknown = events - EVENTS - WAHA_ONLY_EVENTS - {"*"}
    if unknown:
        known = ", ".join(sorted(EVENTS))
        raise web.HTTPBadRequest(text=f"unknown event(s) {', '.join(sorted(unknown))}; {known}")
    hub, grant = request.app[HUB], grant_of(request)
    socket = web.WebSocketResponse(heartbeat=30)
    await socket.prepare(request)
    async with hub.subscribe() as queue:
        drain = asyncio.create_task(_ignore_incoming(socket))
        try:
            while not socket.closed and queue in hub.queues:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1)
                except TimeoutError:
                    continue
                if (
                    ("*" in sessions or event.session in sessions)
                    and ("*" in events or event.event in events)
                    and _may_see(grant, event)
                ):
                    await socket.send_str(event.body().decode())
            if queue not in hub.queues:
                await socket.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")
        finally:
            drain.cancel()
    return socket


def _may_see(grant: Grant, event: Event) -> bool:
    """A tenant key's socket gets its own sessions' events only."""
    if grant.admin:
        return True
    try:
        sid = session_id(event.session)
    except BadName:
        return False
    return grant.may_see(sid, str(event.metadata.get("workspace_id", "")))


async def _ignore_incoming(socket: web.WebSocketResponse) -> None:
    """Read (and drop) what the client sends, so pings and its close are handled."""
    async for _ in socket:
        pass
