"""The heartbeat: what a shard publishes about itself, and how it is written to and read from Redis.

A shard writes its `Beat` as the fields of one Redis hash (`Keys.shard`), with a TTL that is also
its lease on its sessions; the autoscaler and the other shards read it back. Both directions live
here, so the two sides cannot drift apart. Purely computational, no side effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class ReportedState(StrEnum):
    """What a shard says about itself in its heartbeat."""

    ACCEPTING = "accepting"
    """Takes new sessions (while below its capacity)."""
    FULL = "full"
    """At capacity, or over its memory watermark: sends new sessions elsewhere."""
    DRAINING = "draining"
    """Moving its sessions to other shards; takes none."""


@dataclass(frozen=True)
class Beat:
    """One shard's heartbeat (docs/redis-schema.md lists the fields)."""

    id: str
    addr: str
    """host:port nginx and the other shards reach it at."""
    state: ReportedState
    sessions: int
    capacity: int
    memory_bytes: int
    memory_limit_bytes: int
    ts: float
    """Epoch seconds when it was written; freshness is judged by this."""
    boot: str = ""
    """Changes whenever the shard process starts (a hex of its start time in milliseconds)."""
    version: str = ""
    started_at: float = 0.0
    draining_since: float | None = None
    baseline_bytes: int = 0
    """`memory_bytes` as measured once the browser was up, before any session opened; 0 when
    unknown (a shard older than this field). Growth since then is what recycling looks at."""

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> Beat:
        """Read the hash fields back; raises ValueError (or KeyError without `id`) if malformed."""
        since = raw.get("draining_since") or ""
        return cls(
            id=raw["id"],
            addr=raw.get("addr", ""),
            state=_state(raw.get("state", ReportedState.ACCEPTING)),
            sessions=int(raw.get("sessions", 0)),
            capacity=int(raw.get("capacity", 0)),
            memory_bytes=int(raw.get("memory_bytes", 0)),
            memory_limit_bytes=int(raw.get("memory_limit_bytes", 0)),
            ts=float(raw.get("ts", 0)),
            boot=raw.get("boot", ""),
            version=raw.get("version", ""),
            started_at=float(raw.get("started_at") or 0),
            draining_since=float(since) if since else None,
            baseline_bytes=int(raw.get("baseline_bytes") or 0),
        )

    def fields(self) -> dict[str, str]:
        """The hash fields to write; `Beat.parse(beat.fields()) == beat`."""
        return {
            "id": self.id,
            "addr": self.addr,
            "state": self.state.value,
            "sessions": str(self.sessions),
            "capacity": str(self.capacity),
            "memory_bytes": str(self.memory_bytes),
            "memory_limit_bytes": str(self.memory_limit_bytes),
            "ts": repr(self.ts),
            "boot": self.boot,
            "version": self.version,
            "started_at": repr(self.started_at),
            "draining_since": "" if self.draining_since is None else repr(self.draining_since),
            "baseline_bytes": str(self.baseline_bytes),
        }

    def fresh(self, now: float, timeout: float) -> bool:
        """Written less than `timeout` seconds before `now`."""
        return now - self.ts <= timeout

    @property
    def has_room(self) -> bool:
        """Takes new sessions: accepting, and below its capacity."""
        return self.state == ReportedState.ACCEPTING and self.sessions < self.capacity


def _state(raw: str) -> ReportedState:
    """A state this version does not know (a newer shard's) counts as full: the shard is alive
    and keeps its sessions, but gets no new ones."""
    try:
        return ReportedState(raw)
    except ValueError:
        return ReportedState.FULL
