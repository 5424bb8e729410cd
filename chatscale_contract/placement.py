"""Where sessions live relative to the ring: placement of new sessions, exceptions for the rest.

The ring decides where a session *should* live; the registry says where it *does* live. New
sessions are placed on their ring owner whenever it has room (consistent hashing with bounded
loads: otherwise the next shard clockwise with room), so for almost every session the two agree
and nginx needs no per-session entry. A session that lives elsewhere (placed on overflow, or its
ring owner changed because a shard joined or left) is an *exception*: nginx's map sends it to its
real owner. When a shard joins, the sessions whose ring owner changed become exceptions by this
same rule, which pins them where they run: no running session ever moves because the ring did.

Purely computational, no side effects.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from chatscale_contract.ring import Ring


def exceptions(ring: Ring, owners: Mapping[str, str], routable: Collection[str]) -> dict[str, str]:
    """Sessions nginx must send somewhere other than their ring owner: session id -> owner.

    `owners` maps each session to the shard holding it (the registry); `routable` are the shards
    nginx has an upstream for. A session whose owner is not routable gets no entry: nginx cannot
    reach that owner anyway, and the ring owner will forward or restore it.
    Purely computational, no side effects.
    """
    reachable = routable if isinstance(routable, (set, frozenset)) else set(routable)
    return {
        session: owner
        for session, owner in owners.items()
        if owner in reachable and ring.owner(session) != owner
    }


def place(ring: Ring, session_id: str, has_room: Callable[[str], bool]) -> str | None:
    """The shard a new session should be created on: its ring owner if it has room, else the
    next shard clockwise with room; None when no member has room.

    Purely computational, no side effects (as long as `has_room` has none).
    """
    for shard in ring.walk(session_id):
        if has_room(shard):
            return shard
    return None


def route(ring: Ring, table: Mapping[str, str], session_id: str) -> str | None:
    """The shard nginx sends `session_id` to, given the exceptions `table` it was rendered with.

    Purely computational, no side effects.
    """
    return table.get(session_id) or ring.owner(session_id)
