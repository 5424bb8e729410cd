"""`autoscaler simulate`: trace parsing and replaying spike and daily traces through the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoscaler.cli import main
from autoscaler.engine.simcluster import NodeSpec
from autoscaler.engine.simulate import TraceError, parse_trace, run
from chatscale_contract.config import Config

DATA = Path(__file__).resolve().parents[2] / "data"
START_DELAY = 30.0


Record = dict[str, Any]


def simulate(trace: str, **policy: object) -> tuple[list[Record], dict[str, float]]:
    config = Config.model_validate({"policy": {"max_shards": 40, **policy}})
    points = parse_trace((DATA / trace).read_text(), trace)
    records = list(run(config, points, tick=1.0, start_delay=START_DELAY, drain_seconds=10.0))
    summary = records.pop()["summary"]
    assert isinstance(summary, dict)
    return records, summary


def test_spike_is_met_once_shards_have_started() -> None:
    records, summary = simulate("spike.csv")
    spike_at = 301
    # Starting shards count as capacity, so the whole requirement is started within
    # ceil(17 / max_step) passes; after that plus the start delay, nothing is unmet.
    met_by = spike_at + START_DELAY + 5
    late = [r for r in records if float(r["t"]) > met_by and int(r["unmet"]) > 0]
    assert late == []
    assert summary["peak_shards"] >= 17
    assert 0 < summary["unmet_seconds"] <= 2 * START_DELAY + 5
    assert summary["flaps"] == 0


def test_spike_scales_back_down_after_the_window() -> None:
    records, _ = simulate("spike.csv")
    end = records[-1]
    assert end["shards"] == 2  # 40 sessions + 5 buffer -> 2 shards at 40 each
    shrink_started = min(
        float(r["t"]) for r in records if any("drain" in a or "stop" in a for a in r["actions"])
    )
    assert shrink_started >= 1201 + 300, "scale-down must wait for the 300 s window"


def test_daily_cycle_meets_demand_without_flapping() -> None:
    records, summary = simulate("daily.csv")
    late = [r for r in records if float(r["t"]) > START_DELAY + 5 and int(r["unmet"]) > 0]
    assert late == []
    assert summary["flaps"] == 0
    assert summary["peak_shards"] == 25  # 900 + 90 buffer at 40 per shard
    assert len(records) == 86401


def test_every_record_has_the_documented_fields() -> None:
    records, summary = simulate("spike.csv")
    assert set(records[0]) == {"t", "sessions", "shards", "desired", "unmet", "actions", "reasons"}
    assert set(summary) == {
        "peak_shards",
        "shard_seconds",
        "unmet_seconds",
        "scale_events",
        "flaps",
        "cluster_full_seconds",
        "ticks",
    }


def test_bad_trace_lines_are_all_named() -> None:
    text = "t,sessions\n0,10\n5,abc\n0,10\n10,-4\n12,7\n"
    with pytest.raises(TraceError) as info:
        parse_trace(text, "load.csv")
    lines = str(info.value).splitlines()
    assert lines == [
        "load.csv:3: sessions: 'abc' is not a whole number",
        "load.csv:4: t must increase (0 after 0)",
        "load.csv:5: sessions: -4 must be >= 0",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,load\n0,1\n", "header must be t,sessions"),
        ("t,sessions\n", "no data lines"),
        ("t,sessions,memory_fraction\n0,1,1.5\n", "between 0 and 1"),
        ("t,sessions\nnan,1\n", "finite"),
    ],
)
def test_bad_traces(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace(text)


def test_cli_prints_json_lines_and_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("policy:\n  max_shards: 40\n")
    assert main(["simulate", "--config", str(config), "--trace", str(DATA / "spike.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2402
    assert json.loads(lines[0])["t"] == 0
    assert "summary" in json.loads(lines[-1])


def test_cli_reports_bad_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("t,sessions\n0,x\n")
    assert (
        main(["simulate", "--config", str(tmp_path / "missing.yaml"), "--trace", str(trace)]) != 0
    )
    config = tmp_path / "c.yaml"
    config.write_text("")
    assert main(["simulate", "--config", str(config), "--trace", str(trace)]) == 2
    assert f"{trace}:2: sessions: 'x' is not a whole number" in capsys.readouterr().err


NODES_TRACE = "t,sessions,nodes\n0,100,3\n300,1100,3\n900,1100,2\n1500,1100,3\n2000,100,3\n"


def test_capacity_planning_places_shards_on_nodes_and_says_when_the_cluster_is_full() -> None:
    config = Config.model_validate({"policy": {"max_shards": 40}})
    points = parse_trace(NODES_TRACE, "nodes.csv")
    records: list[Record] = list(
        run(config, points, 1.0, START_DELAY, 10.0, NodeSpec(3, 64 * 1024**3))
    )
    summary = records.pop()["summary"]
    by_t = {r["t"]: r for r in records}
    # 1100 sessions need 31 shards of 40; 3 nodes x 64 GiB hold 6 shards of 10g each: 18.
    assert summary["peak_shards"] == 18 and by_t[600.0]["shards"] == 18
    full = "cluster full: 3 node(s) with 192 GiB hold 18 shard(s) reserving 10g each"
    assert any(r.startswith(full) for r in by_t[600.0]["reasons"])
    # A node fails: its 6 shards wait for room; it comes back: they run again.
    assert by_t[901.0]["nodes_up"] == 2 and by_t[901.0]["unplaced"] == 6
    assert by_t[1501.0]["unplaced"] == 0
    assert 0 < summary["cluster_full_seconds"] <= summary["unmet_seconds"]


def test_capacity_planning_flags_go_together(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(NODES_TRACE)
    base = ["simulate", "--config", str(tmp_path / "none.yaml"), "--trace", str(trace)]
    assert main([*base, "--nodes", "3"]) == 2
    assert "--nodes (at least 1) and --node-memory" in capsys.readouterr().err
    assert main([*base, "--nodes", "3", "--node-memory", "lots"]) == 2
    assert "--node-memory: 'lots' is not a size" in capsys.readouterr().err
