"""Where a held request goes: its session's holder, else bounded-load placement on the ring
nginx serves, else on a ring of every live shard (a shard nginx does not know yet)."""

from __future__ import annotations

from autoscaler.activator.choose import Reading, choose
from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.placement import place
from chatscale_contract.ring import Ring


def beat(n: int, sessions: int = 0, state: ReportedState = ReportedState.ACCEPTING) -> Beat:
    return Beat(f"shard-{n}", f"s{n}:8000", state, sessions, 10, 0, 0, ts=100.0 + n)


def members(*numbers: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"shard-{n}", f"s{n}:8000") for n in numbers)


def reading(*beats: Beat, ring: tuple[tuple[str, str], ...] | None = None) -> Reading:
    return Reading({b.id: b for b in beats}, ring)


def test_nothing_alive_nothing_chosen() -> None:
    assert reading().empty
    assert choose(reading(), "alice", "") is None
    assert choose(reading(), "", "") is None


def test_a_session_goes_to_its_holder_even_when_full_or_draining() -> None:
    held = reading(beat(1), beat(2, 10, ReportedState.DRAINING), ring=members(1))
    assert choose(held, "alice", "shard-2") == held.beats["shard-2"]


def test_a_dead_holder_is_skipped_and_the_session_placed_anew() -> None:
    fleet = reading(beat(1), beat(2), ring=members(1, 2))
    expected = place(Ring(members(1, 2)), "alice", lambda _: True)
    chosen = choose(fleet, "alice", "shard-9")
    assert chosen is not None and chosen.id == expected


def test_new_sessions_follow_the_published_ring_with_bounded_loads() -> None:
    ring = members(1, 2, 3)
    for sid in ("alice", "bob", "carol", "dave", "erin"):
        owner = Ring(ring).owner(sid)
        assert owner is not None
        beats = [beat(n, 10 if f"shard-{n}" == owner else 0) for n in (1, 2, 3)]
        chosen = choose(reading(*beats, ring=ring), sid, "")
        expected = place(Ring(ring), sid, owner.__ne__)
        assert chosen is not None and chosen.id == expected != owner


def test_a_shard_nginx_does_not_know_yet_is_used_at_once() -> None:
    # Cold start: the published ring is empty (or lists only full shards); a new shard beats.
    assert choose(reading(beat(1), ring=()), "alice", "") == beat(1)
    fresh = reading(beat(1, 10), beat(2), ring=members(1))
    assert choose(fresh, "alice", "") == beat(2)
    assert choose(reading(beat(3), ring=None), "alice", "") == beat(3)


def test_draining_and_full_shards_take_no_new_session() -> None:
    fleet = reading(beat(1, 10), beat(2, 0, ReportedState.DRAINING), ring=members(1, 2))
    assert choose(fleet, "alice", "") is None
    assert choose(fleet, "", "") is None


def test_requests_without_a_session_go_to_the_emptiest_shard_with_room() -> None:
    fleet = reading(beat(1, 7), beat(2, 3), beat(3, 10), ring=members(1, 2, 3))
    assert choose(fleet, "", "") == fleet.beats["shard-2"]


def test_a_shard_that_refused_is_skipped_until_it_beats_again() -> None:
    fleet = reading(beat(1), beat(2), ring=members(1, 2))
    first = choose(fleet, "alice", "")
    assert first is not None
    second = choose(fleet, "alice", "", {first.id: first.ts})
    assert second is not None and second.id != first.id
    both = {"shard-1": beat(1).ts, "shard-2": beat(2).ts}
    assert choose(fleet, "alice", "", both) is None
    again = Beat(**{**beat(1).__dict__, "ts": 500.0})  # it beat since
    assert choose(reading(again, beat(2), ring=members(1, 2)), "alice", "", both) == again
