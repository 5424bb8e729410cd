"""The engine's vocabulary: the fleet as the engine sees it, plans, actions and history.

Plain frozen dataclasses with no behaviour beyond small derived properties.
Purely computational, no side effects.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from enum import StrEnum


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
    age: float | None = None
    """Seconds since the shard process started (from its heartbeat); None when unknown."""
    outdated: bool = False
    """Started with other shard settings than the running config."""
    baseline_bytes: int = 0
    """Memory the shard reported once its browser was up, before any session; 0 when unknown."""
    routed: bool = False
    """The fronts still send sessions' requests to it: in the ring, or an exception's target,
    of the config every live front was last confirmed to serve. Stopped now, it would fail
    them (connection refused) until the fronts reload."""

    @property
    def growth_bytes(self) -> int | None:
        """Memory gained since the baseline; None when either figure is unknown."""
        if self.baseline_bytes <= 0 or self.memory_bytes <= 0:
            return None
        return self.memory_bytes - self.baseline_bytes

    @property
    def growth_per_session_bytes(self) -> int | None:
        """Memory gained since the baseline per session it holds; None when unknown or empty."""
        growth = self.growth_bytes
        if growth is None or self.sessions <= 0:
            return None
        return growth // self.sessions


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
    orphans: int = 0
    """Sessions released to be placed again (their shard stopped) and not placed yet."""
    room: int | None = None
    """How many more shards the runtime can place now; None when it sets no bound (one Docker
    host, local processes). On Swarm: free reservable memory of the eligible nodes."""
    room_reason: str = ""
    """Why there is no room, in words an operator can act on (set when `room` is 0)."""
    notes: tuple[str, ...] = ()
    """Facts worth a line in the plan's reasons (a shard waiting for the scheduler)."""

    @property
    def sessions(self) -> int:
        return sum(s.sessions for s in self.shards)

    @property
    def waiting(self) -> int:
        """Sessions that need a slot and have none yet."""
        return self.pending + self.orphans

    @property
    def busy(self) -> bool:
        """Anything at all to serve: a session (held by any shard, even a dead one) or a
        request waiting for room."""
        return self.sessions > 0 or self.waiting > 0

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
    busy_at: float | None = None
    """When the fleet last had a session or a waiting request (None: not since started_at)."""

    def record(self, t: float, recommendation: int, keep_seconds: float, busy: bool) -> History:
        """Append (entries stay in time order) and forget what is older than keep_seconds;
        remember `t` if the fleet was `busy` then."""
        cut = bisect_left(self.entries, (t - keep_seconds,))
        entries = (*self.entries[cut:], (t, recommendation))
        return History(self.started_at, entries, t if busy else self.busy_at)

    def idle_for(self, now: float) -> float:
        """Seconds since the fleet last had a session or a waiting request."""
        last = self.started_at if self.busy_at is None else self.busy_at
        return max(0.0, now - last)

    def within(self, now: float, seconds: float) -> list[int]:
        low = bisect_left(self.entries, (now - seconds,))
        high = bisect_right(self.entries, (now, float("inf")))
        return [value for _, value in self.entries[low:high]]
