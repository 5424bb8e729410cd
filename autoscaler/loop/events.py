"""Every action the autoscaler takes, with its reason, in a capped Redis stream."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from chatscale_contract.keys import Keys

MAX_EVENTS = 10_000


class Outcome(StrEnum):
    """How an action ended; also the `outcome` label of `chatscale_scale_events`."""

    OK = "ok"
    DRY_RUN = "dry_run"
    """Decided and reported, not carried out (`policy.dry_run`)."""
    FAILED = "failed"
    """The event's `detail` says why."""

    @classmethod
    def parse(cls, raw: str) -> tuple[Outcome, str]:
        """(outcome, detail) from a stored event, including the "failed: <why>" and "dry run"
        spellings of version 0.1."""
        if raw == "dry run":
            return cls.DRY_RUN, ""
        head, _, detail = raw.partition(": ")
        return cls(head), detail


@dataclass(frozen=True)
class Event:
    kind: str
    """An action kind (start, drain, stop, cancel_drain, replace) or "adopt"."""
    shard: str
    reason: str
    outcome: Outcome
    ts: float
    detail: str = ""
    """Why it failed; empty otherwise."""

    def __str__(self) -> str:
        told = f"{self.outcome}: {self.detail}" if self.detail else self.outcome.value
        return f"{self.kind} {self.shard}: {told}"

    def as_dict(self) -> dict[str, str | float]:
        return {
            "kind": self.kind,
            "shard": self.shard,
            "reason": self.reason,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "ts": self.ts,
        }


class EventLog:
    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    async def record(self, event: Event) -> None:
        fields: dict[Any, Any] = {k: str(v) for k, v in event.as_dict().items()}
        fields["ts"] = repr(event.ts)
        await self.redis.xadd(self.keys.events, fields, maxlen=MAX_EVENTS, approximate=True)

    async def recent(self, count: int = 50) -> list[Event]:
        rows = await self.redis.xrevrange(self.keys.events, count=count) or []
        events = []
        for _, raw in rows:
            f = {str(k): str(v) for k, v in (raw or {}).items()}
            outcome, detail = Outcome.parse(f["outcome"])
            detail = f.get("detail") or detail
            events.append(
                Event(f["kind"], f["shard"], f["reason"], outcome, float(f["ts"]), detail)
            )
        return events
