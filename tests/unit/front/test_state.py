"""The publishing side of the front (pure): when to hand a config over, when it counts as served."""

from __future__ import annotations

from autoscaler.front.state import FrontState, Target

A = Target.of("v1", {"shard-1": "10.0.0.2:8000"})
MOVED = Target.of("v1", {"shard-1": "10.0.0.9:8000"})
B = Target.of("v2", {"shard-1": "10.0.0.2:8000", "shard-2": "10.0.0.3:8000"})


def test_a_new_table_is_handed_over_then_awaited_until_served() -> None:
    state = FrontState().want(A)
    assert state.may_publish(now=0) and not state.awaiting
    handed = state.handed_over(now=5, generation="g1")
    assert handed.published == A and handed.published_at == 5 and handed.generation == "g1"
    assert handed.awaiting and not handed.to_publish
    served = handed.served()
    assert served.applied == A and not served.awaiting and not served.to_publish
    assert served.want(A) is served, "an unchanged wish changes nothing"


def test_a_shard_that_moved_is_handed_over_again() -> None:
    assert MOVED.version == A.version
    served = FrontState().want(A).handed_over(0, "g1").served()
    assert served.want(MOVED).to_publish


def test_nothing_counts_as_served_before_it_is_confirmed() -> None:
    served = FrontState().want(A).handed_over(0, "g1").served()
    waiting = served.want(B).handed_over(1, "g2").waiting("front f1 lags")
    assert waiting.applied == A and waiting.awaiting and waiting.error == "front f1 lags"
    assert not waiting.to_publish, "a lagging front is waited for, not handed the config again"


def test_a_failed_hand_over_waits_before_the_next_attempt() -> None:
    failed = FrontState().want(A).failed("render failed: boom", retry_at=10)
    assert failed.error and not failed.may_publish(now=9) and failed.may_publish(now=10)
    assert failed.handed_over(now=10, generation="g1").error == ""
