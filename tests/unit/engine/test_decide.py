"""Table tests for every rule of the scaling engine (`autoscaler.engine.decide`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from autoscaler.engine.decide import decide, requirement
from autoscaler.engine.model import Action, ActionKind, History, Observed, ShardState, ShardView
from chatscale_contract.config import Buffer, Policy, ScaleDown, ScaleUp, Schedule

GB = 1024**3
NOW = 1_000_000.0
READY, STARTING, DRAINING, DEAD = (
    ShardState.READY,
    ShardState.STARTING,
    ShardState.DRAINING,
    ShardState.DEAD,
)


def policy(**overrides: object) -> Policy:
    base: dict[str, object] = {
        "min_shards": 1,
        "max_shards": 20,
        "target_utilization": 1.0,
        "buffer": Buffer(slots=0, percent=0),
        "scale_up": ScaleUp(max_step=10),
        "scale_down": ScaleDown(stabilization=300, max_step=1),
    }
    base.update(overrides)
    return Policy.model_validate(base)


def fleet(*shards: tuple[str, ShardState, int] | ShardView, fresh: bool = True) -> Observed:
    views = tuple(s if isinstance(s, ShardView) else ShardView(s[0], s[1], s[2]) for s in shards)
    return Observed(views, max_sessions=50, memory_limit_bytes=10 * GB, fresh=fresh)


def ready(n: int, sessions: int) -> tuple[str, ShardState, int]:
    return (f"shard-{n}", READY, sessions)


OLD = History(started_at=NOW - 10_000)  # long enough to cover any window


def kinds(plan_actions: tuple[Action, ...]) -> list[tuple[str, str]]:
    return [(a.kind.value, a.shard_id) for a in plan_actions]


# --- requirement: ceil((sessions + buffer) / (max_sessions x target_utilization)) ---------------


@pytest.mark.parametrize(
    ("sessions", "util", "slots", "percent", "expected"),
    [
        (0, 1.0, 0, 0, 0),
        (1, 1.0, 0, 0, 1),
        (50, 1.0, 0, 0, 1),
        (51, 1.0, 0, 0, 2),
        (40, 0.8, 0, 0, 1),
        (41, 0.8, 0, 0, 2),
        (100, 0.8, 10, 0, 3),  # 110 / 40 = 2.75
        (100, 0.8, 5, 20, 3),  # percent wins: 100 + 20 = 120 / 40 = 3
        (100, 0.8, 21, 20, 4),  # slots win: 121 / 40
        (0, 0.8, 5, 10, 1),  # an empty fleet still keeps its buffer ready
    ],
)
def test_requirement_from_sessions(
    sessions: int, util: float, slots: int, percent: float, expected: int
) -> None:
    p = policy(target_utilization=util, buffer=Buffer(slots=slots, percent=percent))
    observed = fleet(ready(1, sessions))
    assert requirement(observed, p).shards == expected


def test_shard_over_memory_watermark_counts_as_full() -> None:
    p = policy(memory_high_watermark=0.8)
    hot = ShardView("shard-1", READY, 10, memory_bytes=int(8.5 * GB))
    cool = ShardView("shard-2", READY, 10, memory_bytes=1 * GB)
    # By sessions alone 20 sessions need 1 shard; the hot shard counts as 50 used slots: 60 -> 2.
    assert requirement(fleet(cool, ShardView("shard-1", READY, 10)), p).shards == 1
    assert requirement(fleet(hot, cool), p).shards >= 2


def test_memory_dimension_wins_when_sessions_are_heavy() -> None:
    # 2 shards x 20 sessions at 400 MB each = 8 GB per shard; the watermark is 0.5 x 10 GB = 5 GB.
    p = policy(memory_high_watermark=0.5)
    shards = [ShardView(f"shard-{i}", READY, 20, memory_bytes=8 * GB) for i in (1, 2)]
    need = requirement(fleet(*shards), p)
    assert need.shards == 4  # 40 sessions x 0.4 GB = 16 GB / 5 GB
    assert any("memory" in r for r in need.reasons)


def test_starting_shards_count_as_capacity() -> None:
    plan = decide(fleet(ready(1, 51), ("shard-2", STARTING, 0)), policy(), OLD, NOW)
    assert plan.current == 2
    assert plan.actions == ()


# --- bounds -----------------------------------------------------------------------------------


def test_bounds_clamp_and_say_why() -> None:
    plan = decide(fleet(ready(1, 50 * 30)), policy(max_shards=5), OLD, NOW)
    assert plan.desired == 5
    assert any("capped at max_shards 5" in r for r in plan.reasons)
    assert [a.kind for a in plan.actions] == [ActionKind.START] * 4


def test_min_shards_floor() -> None:
    plan = decide(fleet(ready(1, 0)), policy(min_shards=3), OLD, NOW)
    assert plan.desired == 3
    assert kinds(plan.actions) == [("start", "shard-2"), ("start", "shard-3")]
    assert any("min_shards" in r for r in plan.reasons)


def test_schedule_raises_the_floor_only_inside_its_window() -> None:
    schedule = Schedule(name="mornings", cron="0 8 * * *", duration=3600, min_shards=4)
    p = policy(schedules=(schedule,))
    at = datetime(2026, 11, 28, 8, 30, tzinfo=UTC).timestamp()
    before = datetime(2026, 11, 28, 7, 59, tzinfo=UTC).timestamp()
    after = datetime(2026, 11, 28, 9, 0, 1, tzinfo=UTC).timestamp()
    inside = decide(fleet(ready(1, 0)), p, History(at - 10_000), at)
    assert inside.desired == 4 and any("schedule 'mornings'" in r for r in inside.reasons)
    assert decide(fleet(ready(1, 0)), p, History(before - 10_000), before).desired == 1
    assert decide(fleet(ready(1, 0)), p, History(after - 10_000), after).desired == 1


def test_schedule_timezone_is_honoured() -> None:
    schedule = Schedule(
        name="berlin", cron="0 8 * * *", duration=600, min_shards=2, timezone="Europe/Berlin"
    )
    p = policy(schedules=(schedule,))
    at = datetime(2026, 11, 28, 7, 5, tzinfo=UTC).timestamp()  # 08:05 in Berlin (UTC+1 in winter)
    assert decide(fleet(ready(1, 0)), p, History(at - 10_000), at).desired == 2


def test_lowering_max_shards_applies_despite_the_window() -> None:
    shards = [ready(i, 0) for i in range(1, 6)]
    plan = decide(fleet(*shards), policy(max_shards=3), History(NOW - 10), NOW)
    assert plan.desired == 3


# --- scale up ---------------------------------------------------------------------------------


def test_scale_up_at_once_bounded_by_max_step() -> None:
    plan = decide(
        fleet(ready(1, 50), ready(2, 50), ready(3, 200)),
        policy(scale_up=ScaleUp(max_step=2)),
        OLD,
        NOW,
    )
    assert plan.desired == 6
    assert kinds(plan.actions) == [("start", "shard-4"), ("start", "shard-5")]


def test_new_shards_reuse_the_lowest_free_ids() -> None:
    plan = decide(fleet(ready(2, 50), ready(5, 50)), policy(), OLD, NOW)
    assert plan.desired == 2 and plan.actions == ()
    plan = decide(fleet(ready(2, 50), ready(5, 60)), policy(), OLD, NOW)
    assert kinds(plan.actions) == [("start", "shard-1")]


def test_scale_up_stabilization_waits_for_the_window() -> None:
    p = policy(scale_up=ScaleUp(max_step=10, stabilization=60))
    history = OLD.record(NOW - 30, 1, 600, busy=True)
    plan = decide(fleet(ready(1, 80)), p, history, NOW)
    assert plan.desired == 1 and plan.actions == ()
    assert any("waits" in r for r in plan.reasons)
    history = OLD.record(NOW - 30, 2, 600, busy=True)
    assert decide(fleet(ready(1, 80)), p, history, NOW).desired == 2


def test_load_returning_cancels_a_drain_before_starting_a_shard() -> None:
    observed = fleet(ready(1, 50), ("shard-2", DRAINING, 20), ready(3, 49))
    plan = decide(observed, policy(), OLD, NOW)  # 119 sessions need 3 shards, 2 count as capacity
    assert kinds(plan.actions) == [("cancel_drain", "shard-2")]


def test_cancel_wins_over_finishing_an_empty_drain() -> None:
    observed = fleet(ready(1, 50), ("shard-2", DRAINING, 0), ready(3, 50))
    plan = decide(observed, policy(buffer=Buffer(slots=1, percent=0)), OLD, NOW)
    assert kinds(plan.actions) == [("cancel_drain", "shard-2")]


@pytest.mark.parametrize(
    ("orphans", "others", "drained_for", "routed", "stops"),
    [
        (0, 10, 60, False, True),  # nothing released, nothing routed to it: complete
        (2, 10, 60, False, False),  # released sessions a ready shard can take: adopted first
        (2, 50, 60, False, True),  # no room anywhere: its slot may be what they wait for
        (2, 10, 1000, False, True),  # past the drain deadline (600 s): it still stops
        (0, 10, 60, True, False),  # the fronts still route to it: they reload first
        (0, 10, 1000, True, True),  # ... but not past the drain deadline
    ],
)
def test_an_empty_drained_shard_stops_once_what_it_released_is_adopted_and_unrouted(
    orphans: int, others: int, drained_for: float, routed: bool, stops: bool
) -> None:
    """The drained shard holds requests for the sessions it released until another shard has
    them, and forwards what the fronts still send it: stopped first, it would fail those."""
    # (drained for a rolling update: a drain for scale-down would be cancelled by full shards)
    drained = ShardView(
        "shard-2", DRAINING, 0, outdated=True, draining_since=NOW - drained_for, routed=routed
    )
    observed = replace(fleet(ready(1, others), drained, ready(3, others)), orphans=orphans)
    plan = decide(observed, policy(max_shards=3, recycle={"outdated": True}), OLD, NOW)
    assert (("stop", "shard-2") in kinds(plan.actions)) is stops, plan
    waits = [r for r in plan.reasons if r.startswith("shard-2 drained: stopped once")]
    assert bool(waits) is not stops, plan.reasons


# --- scale down -------------------------------------------------------------------------------


def test_scale_down_drains_the_emptiest_shard() -> None:
    observed = fleet(ready(1, 30), ready(2, 5), ready(3, 20))
    plan = decide(observed, policy(), OLD, NOW)
    assert plan.desired == 2
    assert kinds(plan.actions) == [("drain", "shard-2")]


def test_scale_down_stops_empty_shards_directly() -> None:
    observed = fleet(ready(1, 30), ready(2, 0), ready(3, 0))
    plan = decide(observed, policy(scale_down=ScaleDown(stabilization=300, max_step=5)), OLD, NOW)
    assert sorted(kinds(plan.actions)) == [("stop", "shard-2"), ("stop", "shard-3")]


def test_scale_down_bounded_by_max_step() -> None:
    observed = fleet(ready(1, 1), ready(2, 0), ready(3, 0), ready(4, 0))
    plan = decide(observed, policy(), OLD, NOW)
    assert plan.desired == 1
    assert len(plan.actions) == 1 and plan.actions[0].kind == ActionKind.STOP


def test_scale_down_only_to_highest_recommendation_in_window() -> None:
    history = OLD.record(NOW - 200, 3, 600, busy=True).record(NOW - 100, 2, 600, busy=True)
    observed = fleet(ready(1, 10), ready(2, 0), ready(3, 0))
    plan = decide(observed, policy(), history, NOW)
    assert plan.desired == 3 and plan.actions == ()
    history = OLD.record(NOW - 400, 3, 600, busy=True).record(NOW - 100, 2, 600, busy=True)
    plan = decide(observed, policy(), history, NOW)
    assert plan.desired == 2


def test_no_scale_down_before_history_covers_the_window() -> None:
    observed = fleet(ready(1, 0), ready(2, 0))
    plan = decide(observed, policy(), History(started_at=NOW - 10), NOW)
    assert plan.desired == 2 and plan.actions == ()
    assert any("history" in r for r in plan.reasons)


def test_draining_shard_with_sessions_is_never_stopped() -> None:
    observed = fleet(ready(1, 10), ("shard-2", DRAINING, 3))
    plan = decide(observed, policy(), OLD, NOW)
    assert plan.actions == ()


def test_empty_draining_shard_is_stopped() -> None:
    observed = fleet(ready(1, 10), ("shard-2", DRAINING, 0))
    assert kinds(decide(observed, policy(), OLD, NOW).actions) == [("stop", "shard-2")]


def test_overdue_drain_is_reported_not_forced() -> None:
    late = ShardView("shard-2", DRAINING, 3, draining_since=NOW - 700)
    plan = decide(fleet(ready(1, 10), late), policy(drain_deadline=600), OLD, NOW)
    assert plan.actions == ()
    assert any("drain of shard-2 overdue" in r for r in plan.reasons)


# --- stale data and dead shards ---------------------------------------------------------------


def test_stale_data_holds_everything() -> None:
    observed = fleet(ready(1, 0), ready(2, 0), ("shard-3", DEAD, 4), fresh=False)
    plan = decide(observed, policy(), OLD, NOW)
    assert plan.held and plan.actions == () and plan.desired == plan.current == 3


def test_dead_shard_is_replaced_with_the_same_id() -> None:
    dead = ShardView("shard-2", DEAD, 32, heartbeat_age=45.0)
    plan = decide(fleet(ready(1, 30), dead), policy(), OLD, NOW)
    assert kinds(plan.actions) == [("replace", "shard-2")]
    assert "45 s" in plan.actions[0].reason


def test_no_scale_down_while_a_dead_shard_is_replaced() -> None:
    dead = ShardView("shard-2", DEAD, 12, heartbeat_age=45.0)
    plan = decide(fleet(ready(1, 30), dead, ready(3, 0)), policy(), OLD, NOW)
    assert kinds(plan.actions) == [("replace", "shard-2")]
    assert any("waits until replaced shards have their sessions back" in r for r in plan.reasons)


def test_no_scale_down_while_a_replacement_restores_sessions() -> None:
    restoring = ("shard-2", STARTING, 12)
    plan = decide(fleet(ready(1, 10), restoring, ready(3, 0)), policy(), OLD, NOW)
    assert plan.actions == ()
    assert any("waits until replaced shards" in r for r in plan.reasons)


def test_replacements_are_paced_by_max_step() -> None:
    dead = [(f"shard-{n}", DEAD, 1) for n in range(1, 6)]
    plan = decide(fleet(*dead), policy(scale_up=ScaleUp(max_step=2)), OLD, NOW)
    assert kinds(plan.actions) == [("replace", "shard-1"), ("replace", "shard-2")]
    assert any("3 more dead shard(s)" in r for r in plan.reasons)


def test_dead_shards_count_so_replacement_is_not_a_second_start() -> None:
    plan = decide(fleet(ready(1, 50), ("shard-2", DEAD, 50)), policy(), OLD, NOW)
    assert plan.current == 2 and plan.desired == 2
    assert kinds(plan.actions) == [("replace", "shard-2")]


# --- scale to zero on purpose (policy.idle_to_zero), and waking ------------------------------


def idle_since(t: float) -> History:
    """History of a fleet last busy at `t`."""
    return History(started_at=NOW - 10_000).record(t, 1, 600, busy=True)


def test_an_idle_fleet_goes_to_zero_whatever_min_shards_and_buffer_say() -> None:
    p = policy(min_shards=2, buffer=Buffer(slots=5, percent=0), idle_to_zero=600)
    plan = decide(fleet(ready(1, 0), ready(2, 0)), p, idle_since(NOW - 601), NOW)
    assert plan.desired == 0 and plan.recommendation == 0
    assert kinds(plan.actions) == [("stop", "shard-2")]  # one per pass (scale_down.max_step)
    assert any("idle_to_zero" in r for r in plan.reasons)


def test_not_before_the_idle_time_has_passed() -> None:
    p = policy(min_shards=2, idle_to_zero=600)
    plan = decide(fleet(ready(1, 0), ready(2, 0)), p, idle_since(NOW - 599), NOW)
    assert plan.desired == 2 and plan.actions == ()


def test_idle_time_counts_from_start_when_never_busy() -> None:
    p = policy(idle_to_zero=600)
    assert decide(fleet(ready(1, 0)), p, History(NOW - 100), NOW).desired == 1
    assert decide(fleet(ready(1, 0)), p, History(NOW - 700), NOW).desired == 0


@pytest.mark.parametrize(
    "observed",
    [
        fleet(ready(1, 1)),
        fleet(("shard-1", DEAD, 2)),  # a dead shard's sessions come back: not idle
        Observed((ShardView("shard-1", READY, 0),), 50, 10 * GB, pending=1),
        Observed((ShardView("shard-1", READY, 0),), 50, 10 * GB, orphans=3),
    ],
)
def test_never_to_zero_while_anything_is_there_to_serve(observed: Observed) -> None:
    p = policy(idle_to_zero=60)
    plan = decide(observed, p, History(NOW - 10_000), NOW)
    assert plan.desired >= 1, plan.reasons


def test_an_open_schedule_window_keeps_its_floor() -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()  # a Monday, 09:00 UTC
    window = Schedule(name="mornings", cron="0 8 * * *", duration=7200, min_shards=2)
    p = policy(idle_to_zero=60, schedules=(window,))
    plan = decide(fleet(ready(1, 0), ready(2, 0)), p, History(at - 10_000), at)
    assert plan.desired == 2


def test_waiting_requests_wake_a_fleet_at_zero() -> None:
    p = policy(min_shards=0, idle_to_zero=60)
    asleep = Observed((), 50, 10 * GB, pending=1)
    plan = decide(asleep, p, History(NOW - 10_000), NOW)
    assert kinds(plan.actions) == [("start", "shard-1")]
    many = decide(Observed((), 50, 10 * GB, pending=120), p, History(NOW - 10_000), NOW)
    assert [a.kind for a in many.actions].count(ActionKind.START) == 3


def test_released_sessions_count_as_waiting_for_room() -> None:
    p = policy(min_shards=0)
    plan = decide(Observed((), 50, 10 * GB, orphans=60), p, OLD, NOW)
    assert plan.desired == 2
    assert "incl. 60 waiting for room" in plan.reasons[0]


def test_history_remembers_when_the_fleet_was_last_busy() -> None:
    history = History(NOW - 100).record(NOW - 50, 1, 600, busy=True)
    history = history.record(NOW - 10, 1, 600, busy=False)
    assert history.idle_for(NOW) == 50
    assert History(NOW - 100).idle_for(NOW) == 100
