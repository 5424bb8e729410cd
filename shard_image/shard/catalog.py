"""The fleet-wide session list: every session with a registry record, read from Redis, so every
shard answers `GET /api/sessions` alike, whichever one nginx picked.

The index (`Keys.sessions`, a ZSET id -> creation time) is kept by the claim and forget scripts
in registry.py. Records written before the index existed are added once per fleet, by the first
shard that starts (`backfill`). Filters are applied here, after reading: a fleet holds thousands
of sessions, not millions, and one pipelined read of a few fields each costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from chatscale_contract.keys import Keys

FIELDS = ("owner", "status", "driver", "workspace_id", "account_id", "error", "token")
"""The record fields a listing shows (the same view as `GET /api/sessions/{id}`)."""
CHUNK = 500
"""Records read per pipeline: bounds one round trip's size on a large fleet."""
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATUSES = frozenset({"STARTING", "SCAN_QR_CODE", "WORKING", "FAILED", "STOPPED"})
PARAMS = frozenset({"status", "workspace_id", "account_id", "limit", "offset"})


class BadQuery(ValueError):
    """A query parameter is wrong; the message names it."""


@dataclass(frozen=True)
class Query:
    """What a client asked to see: filters (empty: any) and one page."""

    statuses: frozenset[str] = frozenset()
    workspace_id: str | None = None
    account_id: str | None = None
    limit: int = 100
    offset: int = 0
    prefix: str = ""
    """Only ids starting with this (a tenant key's sessions)."""

    def matches(self, record: dict[str, str]) -> bool:
        if self.statuses and record.get("status", "STOPPED") not in self.statuses:
            return False
        if self.workspace_id is not None and record.get("workspace_id", "") != self.workspace_id:
            return False
        return self.account_id is None or record.get("account_id", "") == self.account_id


def query_from(params: Mapping[str, str]) -> Query:
    """The listing query in a request's parameters (`?status=WORKING,FAILED&workspace_id=w1
    &limit=50&offset=100`); BadQuery names the parameter that is wrong."""
    unknown = set(params) - PARAMS
    if unknown:
        allowed = ", ".join(sorted(PARAMS))
        raise BadQuery(f"unknown query parameter(s): {', '.join(sorted(unknown))} ({allowed})")
    statuses = frozenset(s for s in params.get("status", "").split(",") if s)
    if statuses - STATUSES:
        wrong = ", ".join(sorted(statuses - STATUSES))
        raise BadQuery(f"status: unknown {wrong}; one or more of {', '.join(sorted(STATUSES))}")
    return Query(
        statuses=statuses,
        workspace_id=params.get("workspace_id"),
        account_id=params.get("account_id"),
        limit=_number(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_number(params, "offset", 0, 0, None),
    )


def _number(params: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= (
        high if high is not None else int(raw)
    ):
        raise BadQuery(f"{name} must be a whole number {bounds}, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Page:
    records: list[tuple[str, dict[str, str]]]
    total: int
    """Sessions matching the filters, over all pages."""


class Catalog:
    def __init__(self, client: aioredis.Redis, keys: Keys, fields: Sequence[str] = FIELDS):
        self.redis = client
        self.keys = keys
        self.fields = tuple(fields)

    async def page(self, query: Query) -> Page:
        """The sessions matching `query`, oldest first (ties by id), one page of them."""
        ids: list[str] = await self.redis.zrange(self.keys.sessions, 0, -1)
        matching: list[tuple[str, dict[str, str]]] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            for sid, record in zip(chunk, await self._records(chunk), strict=True):
                # A record gone between the two reads (deleted just now) is not listed.
                if record and sid.startswith(query.prefix) and query.matches(record):
                    matching.append((sid, record))
        end = query.offset + query.limit
        return Page(matching[query.offset : end], len(matching))

    async def _records(self, ids: Sequence[str]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.hmget(self.keys.session(sid), *self.fields)
            rows = await pipe.execute()
        return [
            {f: v for f, v in zip(self.fields, row, strict=True) if v is not None}
            if any(v is not None for v in row)
            else {}
            for row in rows
        ]

    async def backfill(self) -> int:
        """Add records that predate the index to it; returns how many. Done once per fleet: the
        mark is set only after a whole scan, so a shard that dies midway leaves the work to the
        next one (two shards scanning at once only repeat idempotent adds)."""
        if await self.redis.exists(self.keys.sessions_indexed):
            return 0
        added = 0
        head = self.keys.session("")
        async for key in self.redis.scan_iter(match=f"{head}*", count=1000):
            created = await self.redis.hget(key, "created_at")
            try:
                score = float(created) if created is not None else None
            except ValueError:
                score = 0.0  # a garbled time: listed first rather than not at all
            if score is not None:
                sid = key.removeprefix(head)
                added += await self.redis.zadd(self.keys.sessions, {sid: score}, nx=True)
        await self.redis.set(self.keys.sessions_indexed, "1")
        return added
