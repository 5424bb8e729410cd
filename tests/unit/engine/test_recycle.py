"""Recycling in the engine: shards past max_age, grown past max_growth_per_session or with old
settings are drained one at a time (their sessions move, a new shard takes their place), only
while the fleet is calm and has room. By default (recycle.max_surge 1) an extra shard starts first
and a drain waits until it is ready; with max_surge 0 a shard is drained at once when the others
have room for its sessions, with one more shard started first when they have none."""

from __future__ import annotations

import pytest

from autoscaler.engine.decide import decide
from autoscaler.engine.model import History, Observed, Plan, ShardState, ShardView
from chatscale_contract.config import Buffer, Policy, Recycle, ScaleDown

NOW = 1_000_000.0
HOUR = 3600.0
OLD = History(started_at=NOW - 10_000)
READY, STARTING, DRAINING, DEAD = (
    ShardState.READY,
    ShardState.STARTING,
    ShardState.DRAINING,
    ShardState.DEAD,
)


def policy(**recycle: object) -> Policy:
    return Policy(
        min_shards=1,
        max_shards=4,
        target_utilization=1.0,
        buffer=Buffer(slots=0, percent=0),
        scale_down=ScaleDown(stabilization=300, max_step=1),
        recycle=Recycle.model_validate({"max_age": 24 * HOUR, **recycle}),
    )


def shard(
    n: int, sessions: int, age_h: float = 1, state: ShardState = READY, outdated: bool = False
) -> ShardView:
    return ShardView(f"shard-{n}", state, sessions, age=age_h * HOUR, outdated=outdated)


def plan(*shards: ShardView, **recycle: object) -> Plan:
    observed = Observed(tuple(shards), max_sessions=10, memory_limit_bytes=2**30)
    return decide(observed, policy(**recycle), OLD, NOW)


def kinds(p: Plan) -> list[tuple[str, str]]:
    return [(a.kind.value, a.shard_id) for a in p.actions]


def test_a_shard_past_max_age_is_drained_when_the_others_have_room() -> None:
    p = plan(shard(1, 4, age_h=30), shard(2, 3), shard(3, 2))
    assert kinds(p) == [("drain", "shard-1")]
    assert "running 30.0 h" in p.actions[0].reason


def test_nothing_is_recycled_by_default() -> None:
    observed = Observed((shard(1, 4, age_h=1000), shard(2, 3, outdated=True)), 10, 2**30)
    assert decide(observed, Policy(min_shards=2, max_shards=4), OLD, NOW).actions == ()


def test_outdated_shards_go_first_then_the_oldest_one_at_a_time() -> None:
    p = plan(
        shard(1, 1, age_h=40),
        shard(2, 1, outdated=True),
        shard(3, 1, age_h=50),
        shard(4, 0),
        outdated=True,
    )
    assert kinds(p) == [("drain", "shard-2")]
    p = plan(shard(1, 1, age_h=40), shard(2, 1), shard(3, 1, age_h=50))
    assert kinds(p) == [("drain", "shard-3")]


def test_no_room_for_its_sessions_starts_one_more_shard_first() -> None:
    for surge in (0, 1):
        p = plan(shard(1, 9, age_h=30), shard(2, 8), max_surge=surge)
        assert kinds(p) == [("start", "shard-3")] and p.desired == 3
        why = "need room" if surge == 0 else "extra shard(s) first"
        assert any(why in r for r in p.reasons), p.reasons
        p = plan(shard(1, 9, age_h=30), shard(2, 8), shard(3, 0, state=STARTING), max_surge=surge)
        assert kinds(p) == [], "waits for the new shard; nothing is scaled down meanwhile"
        p = plan(shard(1, 9, age_h=30), shard(2, 8), shard(3, 0), max_surge=surge)
        assert kinds(p) == [("drain", "shard-1")]


def test_max_surge_0_drains_first_when_the_others_have_room() -> None:
    """No new shard has to prove itself first: with a broken new image an old shard is gone
    before that shows (what max_surge, the default, prevents)."""
    old = (shard(1, 4, outdated=True), shard(2, 3, outdated=True))
    assert kinds(plan(*old, outdated=True, max_surge=0)) == [("drain", "shard-1")]
    assert kinds(plan(*old, outdated=True)) == [("start", "shard-3")]


def test_a_recycled_shard_is_replaced_not_un_drained_and_stopped_once_empty() -> None:
    p = plan(shard(1, 6, age_h=30, state=DRAINING), shard(2, 8))
    assert kinds(p) == [("start", "shard-3")], "a start, not a cancelled drain"
    p = plan(shard(1, 0, age_h=30, state=DRAINING), shard(2, 9), shard(3, 5))
    assert kinds(p) == [("stop", "shard-1")]


def test_max_at_once_bounds_the_drains_under_way() -> None:
    shards = (shard(1, 1, 30, DRAINING), shard(2, 1, 31), shard(3, 1, 32), shard(4, 0))
    assert kinds(plan(*shards)) == []
    assert kinds(plan(*shards, max_at_once=2)) == [("drain", "shard-3")]


def test_no_recycle_while_a_shard_is_dead_paused_or_the_fleet_full() -> None:
    assert kinds(plan(shard(1, 1, age_h=30), shard(2, 1, state=DEAD))) == [("replace", "shard-2")]
    p = plan(shard(1, 6, age_h=30), shard(2, 6), paused=True)
    assert kinds(p) == [] and "recycling paused" in p.reasons
    full = [shard(n, 10) for n in range(2, 5)]
    p = plan(shard(1, 10, age_h=30), *full)
    assert kinds(p) == [] and any("max_shards" in r for r in p.reasons)


def test_a_new_shard_that_never_comes_up_holds_the_rollout_and_the_old_ones_keep_serving() -> None:
    """A broken new image: its shard stays starting, then dies and is replaced again and again;
    meanwhile no outdated shard is drained, so the old ones keep every session."""
    old = (shard(1, 4, outdated=True), shard(2, 3, outdated=True))
    p = plan(*old, shard(3, 0, state=STARTING), outdated=True)
    assert kinds(p) == [] and any("waits" in r for r in p.reasons)
    assert "rollout held: new shard shard-3 has not come up; recycle of shard-1 waits" in p.reasons
    p = plan(*old, shard(3, 0, state=DEAD), outdated=True)
    assert kinds(p) == [("replace", "shard-3")]
    assert any(r.startswith("rollout held: shard-3 is dead") for r in p.reasons), p.reasons


# The load needs 2 shards (17 sessions, 10 each): 2 old ones run, and a third one is new.
NEEDED = (shard(1, 9, outdated=True), shard(2, 8, outdated=True))


@pytest.mark.parametrize(
    ("new", "actions", "reason"),
    [
        pytest.param((), [("start", "shard-3")], "rollout: 1 extra shard(s) first", id="none yet"),
        pytest.param(
            (shard(3, 0, state=STARTING),),
            [],
            "rollout held: new shard shard-3 has not come up",
            id="starting: no drain",
        ),
        pytest.param(
            (shard(3, 0, state=DEAD),),
            [("replace", "shard-3")],
            "rollout held: shard-3 is dead",
            id="dead: replaced, the old ones untouched",
        ),
        pytest.param(
            (shard(3, 2, state=STARTING),),
            [],
            "rollout held: shard-3 is restoring 2 session(s)",
            id="restoring: no drain",
        ),
        pytest.param((shard(3, 0),), [("drain", "shard-1")], "", id="ready: one drain"),
    ],
)
def test_surge_first_an_extra_shard_starts_and_a_drain_waits_until_it_is_ready(
    new: tuple[ShardView, ...], actions: list[tuple[str, str]], reason: str
) -> None:
    p = plan(*NEEDED, *new, outdated=True)
    assert kinds(p) == actions
    assert p.desired == 3, "the extra shard is kept (asked for, starting, dead or ready)"
    if reason:
        assert any(r.startswith(reason) for r in p.reasons), p.reasons


def test_the_extra_shard_is_never_scaled_down_while_the_recycle_is_due() -> None:
    """The old shards are empty and the load needs only one: the extra shard still starts, and
    stays (starting, ready, or once a drain is under way) until no shard is due."""
    old = (shard(1, 0, outdated=True), shard(2, 0, outdated=True))
    assert kinds(plan(*old, outdated=True)) == [("start", "shard-3")]
    assert kinds(plan(*old, shard(3, 0, state=STARTING), outdated=True)) == []
    assert kinds(plan(*old, shard(3, 0), outdated=True)) == [("drain", "shard-1")]
    under_way = (shard(1, 2, state=DRAINING, outdated=True), shard(2, 0, outdated=True))
    p = plan(*under_way, shard(3, 0), outdated=True)
    assert kinds(p) == [] and p.desired == 2
    p = plan(*under_way, shard(3, 0, state=STARTING), outdated=True)
    assert kinds(p) == [] and p.desired == 2
    # (without a due shard the same fleet does shrink: the emptiest, highest shard goes)
    assert kinds(plan(*under_way, shard(3, 0))) == [("stop", "shard-3")]


def test_max_surge_2_starts_two_extra_shards_each_gating_one_drain() -> None:
    new = (shard(3, 0), shard(4, 0))
    p = plan(*NEEDED, outdated=True, max_surge=2)
    assert kinds(p) == [("start", "shard-3"), ("start", "shard-4")] and p.desired == 4
    assert kinds(plan(*NEEDED, *new, outdated=True, max_surge=2)) == [("drain", "shard-1")]
    under_way = (shard(1, 9, state=DRAINING, outdated=True), shard(2, 8, outdated=True))
    p = plan(*under_way, *new, outdated=True, max_surge=2)
    assert kinds(p) == [] and p.desired == 3, "max_at_once 1: the second extra shard waits"
    p = plan(*under_way, *new, outdated=True, max_surge=2, max_at_once=2)
    assert kinds(p) == [("drain", "shard-2")]
    # max_surge 1 with max_at_once 2: the drain under way uses the one extra shard allowed
    p = plan(*under_way, shard(3, 0), outdated=True, max_at_once=2)
    assert kinds(p) == [] and any("use max_surge" in r for r in p.reasons), p.reasons


def test_no_extra_shard_beyond_max_shards_and_no_drain_without_one() -> None:
    full = [shard(n, 8, outdated=True) for n in range(1, 5)]
    p = plan(*full, outdated=True)
    assert kinds(p) == [] and any("max_shards" in r for r in p.reasons), p.reasons
    assert kinds(plan(*full, outdated=True, max_surge=0)) == [], "no room for 8 sessions either"


def test_at_max_shards_with_room_a_shard_is_replaced_in_place() -> None:
    # No extra shard fits, but the others can take one shard's sessions: a fleet at its
    # maximum still updates, one shard at a time (max_at_once), as max_surge 0 would.
    at_max = [shard(n, 2, outdated=True) for n in range(1, 5)]
    p = plan(*at_max, outdated=True)
    assert [kind for kind, _ in kinds(p)] == ["drain"], p.reasons
    assert "in place: no room for an extra shard" in p.actions[0].reason


MIB = 2**20


def grown(
    n: int, sessions: int, per_session_mib: float, state: ShardState = READY, baseline: int = 500
) -> ShardView:
    """A shard whose memory grew `per_session_mib` per session over a baseline of `baseline`
    MiB (0: a heartbeat without one). Without sessions it grew 900 MiB, with nothing to divide
    that by."""
    grew = sessions * per_session_mib if sessions else 900
    memory = int((500 + grew) * MIB)
    return ShardView(f"shard-{n}", state, sessions, memory, age=HOUR, baseline_bytes=baseline * MIB)


def gplan(*shards: ShardView, pending: int = 0, recycle: dict[str, object] | None = None) -> Plan:
    """A plan with max_growth_per_session 100 MiB (and `recycle`), on shards of 10 GiB (so
    their memory alone makes none of them full)."""
    settings = {"max_growth_per_session": 100, **(recycle or {})}
    observed = Observed(tuple(shards), 10, 10 * 2**30, pending=pending)
    return decide(observed, policy(**settings), OLD, NOW)


def recycled(p: Plan) -> list[str]:
    return [a.shard_id for a in p.actions if a.kind == "drain" and a.reason.startswith("recycle")]


@pytest.mark.parametrize(
    ("first", "recycle", "drained"),
    [
        pytest.param(grown(1, 4, 150), {}, ["shard-1"], id="over the bound: drained"),
        pytest.param(grown(1, 4, 90), {}, [], id="under the bound: kept"),
        pytest.param(grown(1, 4, 100), {}, [], id="at the bound: kept"),
        pytest.param(grown(1, 0, 0), {}, [], id="no sessions: kept"),
        pytest.param(grown(1, 4, 150, baseline=0), {}, [], id="unknown baseline: kept"),
        pytest.param(grown(1, 4, 150), {"paused": True}, [], id="paused: kept"),
        pytest.param(grown(1, 4, 150), {"max_growth_per_session": None}, [], id="policy off: kept"),
    ],
)
def test_a_shard_grown_past_max_growth_per_session_is_recycled(
    first: ShardView, recycle: dict[str, object], drained: list[str]
) -> None:
    p = gplan(first, shard(2, 3), shard(3, 2), recycle=recycle)
    assert recycled(p) == drained
    if drained:
        reason = p.actions[0].reason
        assert "150 MiB per session" in reason and "max_growth_per_session 100 MiB" in reason


def test_growth_recycles_wait_like_any_other() -> None:
    """max_at_once, room and a busy fleet gate a growth recycle as they gate max_age."""
    under_way = grown(1, 2, 300, state=DRAINING)
    assert recycled(gplan(under_way, grown(2, 2, 150), shard(3, 1), shard(4, 0))) == []
    p = gplan(under_way, grown(2, 2, 150), shard(3, 1), recycle={"max_at_once": 2})
    assert recycled(p) == ["shard-2"]
    p = gplan(grown(1, 9, 150), shard(2, 8))
    assert kinds(p) == [("start", "shard-3")], "no room for its sessions: one more shard first"
    p = gplan(grown(1, 4, 150), shard(2, 3), shard(3, 0, state=STARTING))
    assert recycled(p) == [] and any("waits" in r for r in p.reasons)


def test_a_shard_drained_for_its_growth_is_stopped_once_empty_not_un_drained() -> None:
    """Empty, it has no per-session figure any more; its drain must still not be cancelled for
    the load (it would get new sessions into the memory it leaked)."""
    p = gplan(grown(1, 0, 0, state=DRAINING), shard(2, 10), shard(3, 10), pending=5)
    assert kinds(p) == [("start", "shard-4"), ("stop", "shard-1")]
