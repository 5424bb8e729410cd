"""Per-key limits (chatscale_contract.auth.Grant): creates and sends per minute, counted
fleet-wide in Redis (one counter per key, kind and minute), and a tenant's cap on sessions.
Past a limit: 429 with Retry-After (the seconds left in the minute); past the cap: 429."""

from __future__ import annotations

import time

from aiohttp import web

from chatscale_contract.hops import FORWARDED_BY
from chatscale_contract.ids import is_shard_id
from shard.access import grant_of, scoped
from shard.catalog import Catalog, Query
from shard.state import SHARD

WINDOW = 60


class Limited(Exception):
    """A key went past one of its limits; `retry_after` is None for a cap."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


def counted_here(request: web.Request) -> bool:
    """A request another shard passed on was counted there already."""
    return not is_shard_id(request.headers.get(FORWARDED_BY, ""))


async def admit_create(request: web.Request) -> None:
    """Before a new session is claimed: the key's creates per minute and its tenant's cap."""
    grant = grant_of(request)
    if not counted_here(request):
        return
    if grant.max_sessions and not grant.admin:
        shard = request.app[SHARD]
        query = scoped(request, Query(limit=1))
        total = (await Catalog(shard.registry.redis, shard.registry.keys).page(query)).total
        if total >= grant.max_sessions:
            raise Limited(f"key {grant.name!r} may hold {grant.max_sessions} sessions", None)
    await _take(request, "creates", grant.creates_per_minute)


async def admit_send(request: web.Request) -> None:
    if counted_here(request):
        await _take(request, "sends", grant_of(request).sends_per_minute)


async def _take(request: web.Request, kind: str, per_minute: int) -> None:
    if not per_minute:
        return
    grant = grant_of(request)
    registry = request.app[SHARD].registry
    now = time.time()
    minute = int(now // WINDOW)
    counter = registry.keys.limit_counter(grant.name, kind, minute)
    async with registry.redis.pipeline(transaction=True) as pipe:
        pipe.incr(counter)
        pipe.expire(counter, 2 * WINDOW)
        used, _ = await pipe.execute()
    if int(used) > per_minute:
        wait = WINDOW - now % WINDOW
        raise Limited(f"key {grant.name!r} may make {per_minute} {kind} a minute", wait)
