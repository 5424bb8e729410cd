"""Holding a request while its session moves between shards.

A drain hands a session off in steps (sessions.py `hand_off`): snapshot, close, release (no
owner for a moment: an orphan), claim by another shard, open there from the snapshot. A page
past its memory bound or a crashed page reopens in place the same way. A request arriving in
between would be refused (409: not running, or not WORKING yet) though nothing is wrong and the
session will answer in a few seconds, so a client sees failures during every rollout. Instead
the request is held: looked up again every HOLD_POLL seconds for up to HANDOFF_WAIT seconds,
then answered as things stand (forwarded to the new owner, served here, or refused as before).

A request passed on by another shard is never passed on again (chatscale_contract/hops.py), so
a shard that finds the session gone elsewhere answers it 503 with MOVING set; the shard that
passed it on then runs its handler again (`rerun_moved`): by then it usually holds the session
itself, or knows its new owner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from shard.errors import Handler, json_error

HOLD_POLL = 0.2
MOVING = "X-Chatscale-Moving"
"""Set on the 503 a shard answers for a passed-on request whose session moved elsewhere."""


class Moved(Exception):
    """The shard a request was passed to says its session moved on: run the handler again."""


W = TypeVar("W")


async def hold(
    where: W, moving: Callable[[W], bool], relocate: Callable[[], Awaitable[W]], wait: float
) -> W:
    """`where`, or once it stops `moving` (at most `wait` seconds) where the session is then."""
    deadline = time.monotonic() + wait
    while moving(where) and time.monotonic() < deadline:
        await asyncio.sleep(HOLD_POLL)
        where = await relocate()
    return where


def moving_answer(sid: str) -> web.Response:
    """The answer to a passed-on request for a session that has moved elsewhere meanwhile."""
    response = json_error(503, f"session {sid!r} is moving; retry", retry_after=1)
    response.headers[MOVING] = "1"
    return response


def rerun_moved(wait: Callable[[], float]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: run the handler again (up to `wait()` seconds) while it raises Moved."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        deadline = time.monotonic() + wait()
        while True:
            try:
                return await handler(request)
            except Moved:
                if time.monotonic() >= deadline:
                    sid = request.match_info.get("id", "")
                    return json_error(503, f"session {sid!r} is moving; retry", retry_after=1)
                await asyncio.sleep(HOLD_POLL)

    return middleware
