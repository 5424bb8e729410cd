"""Every action the autoscaler takes, with its reason, in a capped Redis stream."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from chatscale_contract.keys import Keys

MAX_EVENTS = 10_000


@dataclass(frozen=True)
class Event:
    kind: str
    """An action kind (start, drain, stop, cancel_drain, replace, adopt) or a daemon event."""
    shard: str
    reason: str
    outcome: str = "ok"
    """"ok", "dry run", or "failed: <why>"."""
    ts: float = 0.0

    def as_dict(self) -> dict[str, str | float]:
        return asdict(self)


class EventLog:
    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    async def record(self, event: Event) -> None:
        fields: dict[Any, Any] = {k: str(v) for k, v in event.as_dict().items()}
        fields["ts"] = repr(event.ts or time.time())
        await self.redis.xadd(self.keys.events, fields, maxlen=MAX_EVENTS, approximate=True)

    async def recent(self, count: int = 50) -> list[Event]:
        rows = await self.redis.xrevrange(self.keys.events, count=count) or []
        events = []
        for _, raw in rows:
            f = {str(k): str(v) for k, v in (raw or {}).items()}
            events.append(Event(f["kind"], f["shard"], f["reason"], f["outcome"], float(f["ts"])))
        return events
