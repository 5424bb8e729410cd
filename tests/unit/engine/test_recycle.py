"""Recycling in the engine: shards past max_age or with old settings are drained one at a time
(their sessions move, a new shard takes their place), only while the fleet is calm and has
room, with one more shard started first when it has none."""

from __future__ import annotations

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
        shard(1, 1, age_h=40), shard(2, 1, outdated=True), shard(3, 1, age_h=50), outdated=True
    )
    assert kinds(p) == [("drain", "shard-2")]
    p = plan(shard(1, 1, age_h=40), shard(2, 1), shard(3, 1, age_h=50))
    assert kinds(p) == [("drain", "shard-3")]


def test_no_room_for_its_sessions_starts_one_more_shard_first() -> None:
    p = plan(shard(1, 9, age_h=30), shard(2, 8))
    assert kinds(p) == [("start", "shard-3")] and p.desired == 3
    assert any("need room" in r for r in p.reasons)
    p = plan(shard(1, 9, age_h=30), shard(2, 8), shard(3, 0, state=STARTING))
    assert kinds(p) == [], "waits for the new shard; nothing is scaled down meanwhile"
    p = plan(shard(1, 9, age_h=30), shard(2, 8), shard(3, 0))
    assert kinds(p) == [("drain", "shard-1")]


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
    p = plan(*old, shard(3, 0, state=DEAD), outdated=True)
    assert kinds(p) == [("replace", "shard-3")]
