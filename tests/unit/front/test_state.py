"""The nginx front's state (pure): when to apply, when to force a reload, what a failure owes."""

from __future__ import annotations

from autoscaler.front.state import FrontState, Target

A = Target.of("v1", {"shard-1": "10.0.0.2:8000"})
MOVED = Target.of("v1", {"shard-1": "10.0.0.9:8000"})
B = Target.of("v2", {"shard-1": "10.0.0.2:8000", "shard-2": "10.0.0.3:8000"})


def test_a_new_table_is_due_and_a_served_one_is_not() -> None:
    state = FrontState().want(A)
    assert state.due(now=0) and not state.force
    served = state.succeeded()
    assert served.applied == A and served.in_step and not served.due(now=0)
    assert served.want(A) is served, "an unchanged wish changes nothing"


def test_a_shard_that_moved_forces_a_reload_of_the_same_text() -> None:
    state = FrontState().want(A).succeeded().want(MOVED)
    assert state.due(now=0) and state.force


def test_another_table_needs_no_force() -> None:
    assert not FrontState().want(A).succeeded().want(B).force


def test_a_failure_waits_and_then_owes_a_forced_retry_even_for_the_served_table() -> None:
    served = FrontState().want(A).succeeded()
    failed = served.want(B).failed("nginx did not serve version v2", retry_at=10)
    assert failed.applied == A, "nothing counts as served before a confirmation"
    assert not failed.due(now=9) and failed.due(now=10)
    assert failed.force and failed.error
    # Even when the fleet goes back to the table nginx was confirmed to serve, the attempt that
    # failed may have installed another file: reload and confirm before calling it served.
    back = failed.want(A)
    assert not back.in_step and back.force
    assert back.succeeded() == FrontState(applied=A, wanted=A)
