"""Holding a request while its session moves between shards.

A drain hands a session off in steps (sessions.py `hand_off`): snapshot, close, release (no
owner for a moment: an orphan), claim by another shard, open there from the snapshot. A page
past its memory bound or a crashed page reopens in place the same way. A request arriving in
between would be refused (409: not running, or not WORKING yet) though nothing is wrong and the
session will answer in a few seconds, so a client sees failures during every rollout. Instead
the request is held: looked up again every HOLD_POLL seconds for up to HANDOFF_WAIT seconds,
then answered as things stand (forwarded to the new owner, served here, or refused as before).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

HOLD_POLL = 0.2

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
