"""Placement and exceptions: every reachable session routes to its owner, a joining shard moves
no running session, and new sessions follow the ring (bounded loads) without growing the map."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatscale_contract.placement import exceptions, place, route
from chatscale_contract.ring import Ring

SHARDS = [f"shard-{n}" for n in range(1, 9)]


def ring_of(ids: list[str]) -> Ring:
    return Ring([(sid, f"chatscale-{sid}:8000") for sid in ids])


shard_sets = st.lists(st.sampled_from(SHARDS), min_size=1, max_size=len(SHARDS), unique=True)
session_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)
owner_maps = st.dictionaries(session_ids, st.sampled_from(SHARDS), max_size=60)


@settings(max_examples=150, deadline=None)
@given(shard_sets, owner_maps, st.lists(st.sampled_from(SHARDS), unique=True))
def test_reachable_sessions_route_to_their_owner(
    members: list[str], owners: dict[str, str], routable_extra: list[str]
) -> None:
    ring = ring_of(members)
    routable = set(members) | set(routable_extra)
    table = exceptions(ring, owners, routable)
    for session, owner in owners.items():
        if owner in routable:
            assert route(ring, table, session) == owner
        else:
            assert session not in table  # nginx has no upstream for it; the ring owner forwards
    # Only sessions off their ring owner take a map entry.
    assert all(ring.owner(s) != o for s, o in table.items())


@settings(max_examples=150, deadline=None)
@given(shard_sets.filter(lambda m: len(m) < len(SHARDS)), owner_maps, st.data())
def test_joining_shard_pins_running_sessions(
    members: list[str], owners: dict[str, str], data: st.DataObject
) -> None:
    joining = data.draw(st.sampled_from([s for s in SHARDS if s not in members]))
    before, after = ring_of(members), ring_of([*members, joining])
    routable = set(members)
    old = exceptions(before, owners, routable)
    new = exceptions(after, owners, routable | {joining})
    for session, owner in owners.items():
        if owner in routable:
            assert route(after, new, session) == route(before, old, session) == owner
    # Entries are added only for sessions the newcomer would have taken (or that it holds).
    for session in new.keys() - old.keys():
        assert joining in (after.owner(session), owners[session])


@settings(max_examples=150, deadline=None)
@given(shard_sets, session_ids, st.sets(st.sampled_from(SHARDS)))
def test_place_is_first_shard_with_room_clockwise(
    members: list[str], session: str, full: set[str]
) -> None:
    ring = ring_of(members)
    chosen = place(ring, session, lambda shard: shard not in full)
    order = list(ring.walk(session))
    with_room = [shard for shard in order if shard not in full]
    assert chosen == (with_room[0] if with_room else None)
    if ring.owner(session) not in full:
        assert chosen == ring.owner(session)


@settings(max_examples=100, deadline=None)
@given(shard_sets, st.lists(session_ids, unique=True, max_size=60))
def test_sessions_placed_on_ring_owners_need_no_entries(
    members: list[str], sessions: list[str]
) -> None:
    ring = ring_of(members)
    owners = {s: place(ring, s, lambda _: True) for s in sessions}
    placed = {s: o for s, o in owners.items() if o is not None}
    assert exceptions(ring, placed, members) == {}


def test_empty_ring_places_nothing_and_pins_everything() -> None:
    ring = ring_of([])
    assert place(ring, "alice", lambda _: True) is None
    assert exceptions(ring, {"alice": "shard-1", "bob": "shard-9"}, ["shard-1"]) == {
        "alice": "shard-1"
    }


def test_overflow_goes_to_next_shard_clockwise() -> None:
    ring = ring_of(SHARDS[:5])
    owner, second, *_ = ring.walk("alice")
    assert place(ring, "alice", lambda shard: shard != owner) == second
    assert place(ring, "alice", lambda _: False) is None
    assert exceptions(ring, {"alice": second}, SHARDS) == {"alice": second}
