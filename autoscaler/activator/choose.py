"""Where a held request goes, given one reading of the fleet. Purely computational.

The same rules as a shard's own forwarding: a session that lives somewhere goes there; a new one
goes to its ring owner if that has room, else the next shard clockwise with room (bounded loads);
a request without a session id goes to the emptiest shard taking sessions. The ring is the one
nginx serves (published in Redis) while any of its members has room; a shard so new that nginx
does not know it yet is used through a ring of every live shard, so a cold start does not wait
for nginx to reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.placement import place
from chatscale_contract.ring import Ring, ring_of, shard_order


@dataclass(frozen=True)
class Reading:
    """The fleet as one read of Redis saw it."""

    beats: Mapping[str, Beat] = field(default_factory=dict)
    """Every live shard's heartbeat (expired ones are gone from Redis), by shard id."""
    ring: tuple[tuple[str, str], ...] | None = None
    """(shard id, addr) of the ring nginx serves; None before any was published."""

    @property
    def empty(self) -> bool:
        """No shard is alive at all: the fleet is at zero (or every shard is down)."""
        return not self.beats


def choose(
    reading: Reading, sid: str, owner: str, refused: Mapping[str, float] | None = None
) -> Beat | None:
    """The shard to pass a request for `sid` ("" for none) to; None when none can take it yet.

    `owner` is the shard the registry says holds `sid` ("" if none). `refused` maps shard ids to
    the heartbeat time of a shard that answered 503 since: skipped until it beats again.
    """
    refused = refused or {}

    def usable(shard_id: str) -> Beat | None:
        beat = reading.beats.get(shard_id)
        if beat is None or refused.get(shard_id) == beat.ts:
            return None
        return beat

    if owner:
        held = usable(owner)
        if held is not None:
            return held
    if not sid:
        return _emptiest([b for b in map(usable, reading.beats) if b is not None and b.has_room])

    def has_room(shard_id: str) -> bool:
        beat = usable(shard_id)
        return beat is not None and beat.has_room

    for ring in _rings(reading):
        target = place(ring, sid, has_room)
        if target is not None:
            return reading.beats[target]
    return None


def _rings(reading: Reading) -> list[Ring]:
    """The published ring first, then one of every live shard taking sessions."""
    live = tuple(
        (b.id, b.addr)
        for b in sorted(reading.beats.values(), key=lambda b: shard_order(b.id))
        if b.state != ReportedState.DRAINING and b.addr
    )
    rings = []
    if reading.ring:
        rings.append(ring_of(reading.ring))
    if live and live != reading.ring:
        rings.append(ring_of(live))
    return rings


def _emptiest(beats: list[Beat]) -> Beat | None:
    return min(beats, key=lambda b: (b.sessions, shard_order(b.id)), default=None)
