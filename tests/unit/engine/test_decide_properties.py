"""Property tests: the engine's invariants hold for any fleet, load and history."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.engine.decide import decide
from autoscaler.engine.model import ActionKind, History, Observed, ShardState, ShardView
from autoscaler.engine.simulate import Simulation, TracePoint
from chatscale_contract.config import Buffer, Config, Policy, ScaleDown, ScaleUp

GB = 1024**3
NOW = 1_000_000.0


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    low = draw(st.integers(0, 10))
    return Policy(
        min_shards=low,
        max_shards=draw(st.integers(max(low, 1), 40)),
        target_utilization=draw(st.floats(0.1, 1.0)),
        buffer=Buffer(slots=draw(st.integers(0, 100)), percent=draw(st.floats(0, 100))),
        scale_up=ScaleUp(max_step=draw(st.integers(1, 8))),
        scale_down=ScaleDown(
            stabilization=draw(st.floats(0, 600)), max_step=draw(st.integers(1, 8))
        ),
        memory_high_watermark=draw(st.floats(0.1, 1.0)),
    )


@st.composite
def fleets(draw: st.DrawFn) -> Observed:
    count = draw(st.integers(0, 30))
    numbers = draw(st.lists(st.integers(1, 60), min_size=count, max_size=count, unique=True))
    shards = []
    for n in numbers:
        state = draw(st.sampled_from(list(ShardState)))
        sessions = 0 if state == ShardState.STARTING else draw(st.integers(0, 50))
        memory = draw(st.integers(0, 12 * GB))
        since = draw(st.none() | st.floats(NOW - 2000, NOW))
        shards.append(ShardView(f"shard-{n}", state, sessions, memory, None, since))
    return Observed(tuple(shards), 50, 10 * GB, fresh=draw(st.booleans()))


histories = st.builds(
    lambda start, entries: History(start, tuple(sorted(entries))),
    st.floats(NOW - 5000, NOW),
    st.lists(st.tuples(st.floats(NOW - 1000, NOW), st.integers(0, 40)), max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(fleets(), policies(), histories)
def test_desired_within_bounds(observed: Observed, policy: Policy, history: History) -> None:
    plan = decide(observed, policy, history, NOW)
    if plan.held:
        assert plan.desired == plan.current
    else:
        assert policy.min_shards <= plan.desired <= policy.max_shards


@settings(max_examples=400, deadline=None)
@given(fleets(), policies(), histories)
def test_no_busy_shard_is_ever_stopped(
    observed: Observed, policy: Policy, history: History
) -> None:
    plan = decide(observed, policy, history, NOW)
    sessions = {s.id: s.sessions for s in observed.shards}
    for action in plan.actions:
        if action.kind == ActionKind.STOP:
            assert sessions[action.shard_id] == 0, action


@settings(max_examples=400, deadline=None)
@given(fleets(), policies(), histories)
def test_one_action_per_shard_and_stale_data_changes_nothing(
    observed: Observed, policy: Policy, history: History
) -> None:
    plan = decide(observed, policy, history, NOW)
    ids = [a.shard_id for a in plan.actions]
    assert len(ids) == len(set(ids))
    if not observed.fresh:
        assert plan.actions == ()
    starts = [a.shard_id for a in plan.actions if a.kind == ActionKind.START]
    assert not set(starts) & {s.id for s in observed.shards}, "a start must use a free id"
    assert decide(observed, policy, history, NOW) == plan, "decide must be deterministic"


@settings(max_examples=60, deadline=None)
@given(
    low=st.integers(0, 200),
    high=st.integers(201, 600),
    period=st.integers(4, 120),
    window=st.integers(150, 400),
)
def test_fast_oscillation_never_flaps(low: int, high: int, period: int, window: int) -> None:
    """Load swinging faster than the scale-down window: the fleet never shrinks and grows back."""
    config = Config.model_validate(
        {"policy": {"max_shards": 40, "scale_down": {"stabilization": window, "max_step": 2}}}
    )
    sim = Simulation(config, start_delay=5, drain_seconds=5)
    sizes = []
    for t in range(0, 3 * window):
        sessions = high if (t // period) % 2 else low
        sim.tick(float(t), TracePoint(float(t), sessions), 1.0)
        sizes.append(len(sim.shards))
    assert sim.summary.flaps == 0
    peak_at = sizes.index(max(sizes))
    assert sizes[:peak_at] == sorted(sizes[:peak_at]), "shrank before the peak"
    assert sizes[peak_at:] == sorted(sizes[peak_at:], reverse=True), "shrank then grew back"
