"""The fleet over the last hour, for the status page's charts: one sample per SAMPLE_EVERY
seconds of sessions, capacity, shards and memory, taken from the passes' observations. Kept in
memory only (a restarted autoscaler starts a new hour). Purely computational, no side effects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from autoscaler.engine.model import Observed, ShardState

SAMPLE_EVERY = 10.0
"""Seconds between samples: 360 in an hour, fine enough to see a spike and a failover."""
KEEP = 3600.0
"""Seconds of samples kept."""


@dataclass(frozen=True)
class Sample:
    ts: float
    sessions: int
    capacity: int
    """Sessions the live shards can hold (sum of max_sessions of those not draining)."""
    shards: int
    """Shards running (starting, ready, full or draining)."""
    memory_bytes: int
    """Memory the shards use, summed."""
    memory_limit_bytes: int
    """Their limits, summed (0 when shards have none, e.g. local processes)."""
    waiting: int
    """Requests refused for lack of room and released sessions not placed yet."""


class Samples:
    """The last hour of samples, oldest first."""

    def __init__(self, every: float = SAMPLE_EVERY, keep: float = KEEP) -> None:
        self.every = every
        self.keep = keep
        self._samples: deque[Sample] = deque()

    def add(self, now: float, observed: Observed) -> bool:
        """Sample `observed` if the last sample is SAMPLE_EVERY old; True when it did. Samples
        from a pass that could not trust its data are skipped (a gap, not a false zero)."""
        if not observed.fresh:
            return False
        if self._samples and now - self._samples[-1].ts < self.every:
            return False
        running = [s for s in observed.shards if s.state != ShardState.DEAD]
        self._samples.append(
            Sample(
                ts=now,
                sessions=observed.sessions,
                capacity=observed.capacity,
                shards=len(running),
                memory_bytes=sum(s.memory_bytes for s in running),
                memory_limit_bytes=len(running) * observed.memory_limit_bytes,
                waiting=observed.waiting,
            )
        )
        while self._samples and now - self._samples[0].ts > self.keep:
            self._samples.popleft()
        return True

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def __len__(self) -> int:
        return len(self._samples)
