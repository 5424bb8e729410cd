"""The heartbeat wire format (pure): written and read by one class, both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.keys import Keys

beats = st.builds(
    Beat,
    id=st.from_regex(r"shard-[1-9][0-9]{0,3}", fullmatch=True),
    addr=st.just("chatscale-shard-1:8000"),
    state=st.sampled_from(ReportedState),
    sessions=st.integers(0, 50),
    capacity=st.integers(1, 50),
    memory_bytes=st.integers(0, 2**40),
    memory_limit_bytes=st.integers(0, 2**40),
    ts=st.floats(0, 4e9, allow_nan=False),
    boot=st.text(alphabet="0123456789abcdef", max_size=12),
    version=st.just("0.2.0"),
    started_at=st.floats(0, 4e9, allow_nan=False),
    draining_since=st.none() | st.floats(0, 4e9, allow_nan=False),
    baseline_bytes=st.integers(0, 2**40),
)


@given(beats)
def test_fields_read_back_to_the_same_beat(beat: Beat) -> None:
    fields = beat.fields()
    assert all(isinstance(v, str) for v in fields.values()), "Redis hash fields are text"
    assert Beat.parse(fields) == beat


def test_a_state_this_version_does_not_know_counts_as_full() -> None:
    beat = Beat.parse({"id": "shard-1", "state": "hibernating", "sessions": "3", "capacity": "5"})
    assert beat.state == ReportedState.FULL and not beat.has_room


def test_a_heartbeat_from_before_the_baseline_field_reads_as_unknown() -> None:
    old = Beat("shard-1", "a:8000", ReportedState.ACCEPTING, 3, 50, 2**30, 0, 1.0).fields()
    del old["baseline_bytes"]
    assert Beat.parse(old).baseline_bytes == 0
    assert Beat.parse({**old, "baseline_bytes": ""}).baseline_bytes == 0


def test_malformed_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        Beat.parse({"id": "shard-1", "sessions": "many"})


def test_lua_fragments_spell_the_same_keys_as_the_builder() -> None:
    keys = Keys("x:")
    head, tail = keys.shard_fragments
    assert head + "shard-7" == keys.shard("shard-7")
    assert head + "shard-7" + tail == keys.shard_sessions("shard-7")
