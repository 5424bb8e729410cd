"""The vocabulary shared by the engine, the observer and the actors: observed fleet, plans, history.

Plain frozen dataclasses with no behaviour beyond small derived properties; nothing here does I/O.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

SHARD_ID = re.compile(r"^shard-([1-9][0-9]{0,5})$")


def shard_id(number: int) -> str:
    """The stable id of shard number `number` (1-based); also the suffix of its container name."""
    return f"shard-{number}"


@lru_cache(maxsize=4096)
def shard_number(sid: str) -> int:
    """Inverse of `shard_id`; raises ValueError for ids this system did not make."""
    match = SHARD_ID.match(sid)
    if not match:
        raise ValueError(f"not a shard id: {sid!r}")
    return int(match.group(1))


class ShardState(StrEnum):
    STARTING = "starting"
    """Container runs but no heartbeat yet; counts as capacity (it will be ready soon)."""
    READY = "ready"
    """Fresh heartbeat; accepting or full."""
    DRAINING = "draining"
    """Moving its sessions away; no longer counts as capacity."""
    DEAD = "dead"
    """Heartbeat older than the timeout, or container gone while it still owns sessions."""


@dataclass(frozen=True)
class Beat:
    """One shard's heartbeat as stored in Redis (see docs/redis-schema.md)."""

    id: str
    addr: str
    state: str
    sessions: int
    capacity: int
    memory_bytes: int
    memory_limit_bytes: int
    ts: float
    boot: str = ""
    version: str = ""
    draining_since: float | None = None

    @classmethod
    def parse(cls, raw: dict[str, str]) -> Beat:
        since = raw.get("draining_since") or ""
        return cls(
            id=raw["id"],
            addr=raw.get("addr", ""),
            state=raw.get("state", "accepting"),
            sessions=int(raw.get("sessions", 0)),
            capacity=int(raw.get("capacity", 0)),
            memory_bytes=int(raw.get("memory_bytes", 0)),
            memory_limit_bytes=int(raw.get("memory_limit_bytes", 0)),
            ts=float(raw.get("ts", 0)),
            boot=raw.get("boot", ""),
            version=raw.get("version", ""),
            draining_since=float(since) if since else None,
        )

    def fresh(self, now: float, timeout: float) -> bool:
        """Written less than `timeout` seconds before `now`."""
        return now - self.ts <= timeout

    @property
    def has_room(self) -> bool:
        """Takes new sessions: accepting, and below its capacity."""
        return self.state == "accepting" and self.sessions < self.capacity


@dataclass(frozen=True)
class ShardView:
    """What the observer knows about one shard at one moment."""

    id: str
    state: ShardState
    sessions: int = 0
    memory_bytes: int = 0
    """Memory in use as the shard reports it (its cgroup figure); 0 when unknown."""
    heartbeat_age: float | None = None
    draining_since: float | None = None
    """Epoch seconds when the drain began, for the drain deadline."""


@dataclass(frozen=True)
class Observed:
    """The whole fleet as seen by one observation."""

    shards: tuple[ShardView, ...]
    max_sessions: int
    memory_limit_bytes: int
    pending: int = 0
    """Sessions refused for lack of room in the last minute and not placed since (clients retry).
    Without this the engine would only see the sessions that fit, and a spike would be invisible."""
    fresh: bool = True
    """False when the store could not be read or the data cannot be trusted."""
    stale_reason: str = ""

    @property
    def sessions(self) -> int:
        return sum(s.sessions for s in self.shards)

    @property
    def capacity(self) -> int:
        """Session slots of the shards that take sessions (ready) or soon will (starting)."""
        live = (ShardState.READY, ShardState.STARTING)
        return sum(1 for s in self.shards if s.state in live) * self.max_sessions


class ActionKind(StrEnum):
    START = "start"
    DRAIN = "drain"
    STOP = "stop"
    CANCEL_DRAIN = "cancel_drain"
    REPLACE = "replace"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    shard_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.shard_id}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """What the engine wants done, and why. `actions` are ordered as they should run."""

    desired: int
    """Shard count the fleet should converge to (after stabilization and bounds)."""
    recommendation: int
    """Requirement of this moment (bounded, not stabilized); the caller records it in History."""
    current: int
    """Shards counting as capacity now (starting, ready, dead-being-replaced)."""
    actions: tuple[Action, ...] = ()
    reasons: tuple[str, ...] = ()
    held: bool = False
    """True when the engine refused to change the fleet (e.g. stale data)."""


@dataclass(frozen=True)
class History:
    """Recent recommendations, for stabilization windows. Immutable: `record` returns a new one."""

    started_at: float
    """When observation began; scale-down waits until history covers its whole window."""
    entries: tuple[tuple[float, int], ...] = field(default=())

    def record(self, t: float, recommendation: int, keep_seconds: float) -> History:
        """Append (entries stay in time order) and forget what is older than keep_seconds."""
        cut = bisect_left(self.entries, (t - keep_seconds,))
        return History(self.started_at, (*self.entries[cut:], (t, recommendation)))

    def within(self, now: float, seconds: float) -> list[int]:
        low = bisect_left(self.entries, (now - seconds,))
        high = bisect_right(self.entries, (now, float("inf")))
        return [value for _, value in self.entries[low:high]]
