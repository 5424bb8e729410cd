"""From one observation to the engine's input (pure): classifying shards, counting sessions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.engine.fleet import Fleet, FleetLimits, ShardInstance, classify, to_observed
from autoscaler.engine.model import ShardState
from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.config import Config

NOW = 1_000_000.0
MIB = 2**20
LIMITS = FleetLimits.of(
    Config.model_validate(
        {"heartbeat": {"interval": 5, "timeout": 20}, "shard": {"boot_timeout": 90}}
    )
)


def instance(running: bool = True, age: float = 500) -> ShardInstance:
    return ShardInstance("shard-1", running, NOW - age, "chatscale-shard-1:8000")


def beat(age: float = 1, state: ReportedState = ReportedState.ACCEPTING, sessions: int = 3) -> Beat:
    return Beat("shard-1", "chatscale-shard-1:8000", state, sessions, 50, 0, 0, NOW - age)


@pytest.mark.parametrize(
    ("inst", "hb", "owned", "expected"),
    [
        (instance(), beat(), 3, ShardState.READY),
        (instance(), beat(state=ReportedState.FULL), 3, ShardState.READY),
        (instance(), beat(state=ReportedState.DRAINING), 3, ShardState.DRAINING),
        (instance(age=10), None, 0, ShardState.STARTING),
        (instance(age=10), beat(age=100), 0, ShardState.STARTING),  # restarted, not beating yet
        (instance(age=500), None, 0, ShardState.DEAD),  # never beat within boot_timeout
        (instance(age=500), beat(age=21), 3, ShardState.DEAD),  # silent past the timeout
        (instance(age=500), beat(age=19), 3, ShardState.READY),
        (instance(running=False), beat(), 3, ShardState.DEAD),  # exited
        (None, None, 4, ShardState.DEAD),  # container gone, sessions still its own
        (None, None, 0, None),  # nothing left: not ours to manage
    ],
)
def test_classify(
    inst: ShardInstance | None, hb: Beat | None, owned: int, expected: ShardState | None
) -> None:
    assert classify(inst, hb, owned, NOW, LIMITS) == expected


def test_to_observed_counts_registry_sessions_and_pending() -> None:
    fleet = Fleet(
        NOW,
        instances={"shard-1": instance()},
        beats={"shard-1": beat(sessions=2)},
        owned={"shard-1": 3, "shard-4": 2},
        pending=5,
    )
    observed = to_observed(fleet, LIMITS)
    views = {v.id: v for v in observed.shards}
    assert views["shard-1"].sessions == 3, "the registry's count wins over a lagging heartbeat"
    assert views["shard-4"].state == ShardState.DEAD and views["shard-4"].sessions == 2
    assert observed.pending == 5 and observed.fresh


def test_unreadable_data_is_stale() -> None:
    observed = to_observed(Fleet(NOW, error="redis unreadable: refused"), LIMITS)
    assert not observed.fresh and observed.stale_reason == "redis unreadable: refused"


def test_growth_per_session_comes_from_the_heartbeats_baseline() -> None:
    """(memory - baseline) / sessions; a heartbeat without a baseline (an older shard) gives
    None, so such a shard is never recycled for its growth."""
    grew = replace(beat(sessions=4), memory_bytes=1400 * MIB, baseline_bytes=600 * MIB)
    old = grew.fields()
    del old["baseline_bytes"]
    for hb, expected in [(grew, 200 * MIB), (Beat.parse(old), None)]:
        fleet = Fleet(NOW, {"shard-1": instance()}, {"shard-1": hb}, owned={"shard-1": 4})
        (view,) = to_observed(fleet, LIMITS).shards
        assert view.growth_per_session_bytes == expected
