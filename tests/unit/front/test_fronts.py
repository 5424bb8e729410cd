"""Whether every live front serves a generation (pure)."""

from __future__ import annotations

from autoscaler.front.fronts import FrontReport, generation, judge

NOW = 1_000_000.0
NEW = generation("text v2", [("shard-1", "10.0.0.2:8000")])


def report(front: str, served: str, age: float = 1, error: str = "") -> FrontReport:
    return FrontReport(front, "node-1", served, "v", NOW - age, error, NEW if error else "")


def verdict(*reports: FrontReport, waited: float = 1.0) -> tuple[bool, tuple[str, ...], str]:
    v = judge(reports, NEW, NOW, waited, front_timeout=5, lag_bound=10)
    return v.served, v.lagging, v.problem


def test_served_when_every_live_front_serves_it() -> None:
    assert verdict(report("a", NEW), report("b", NEW)) == (True, (), "")


def test_a_front_that_stopped_reporting_is_not_waited_for() -> None:
    assert verdict(report("a", NEW), report("gone", "old", age=6)) == (True, (), "")


def test_no_live_front_holds_nothing_back() -> None:
    assert verdict()[0] is True


def test_a_lagging_front_is_waited_for_and_reported_after_the_bound() -> None:
    assert verdict(report("a", NEW), report("b", "old")) == (False, ("b",), "")
    served, lagging, problem = verdict(report("a", NEW), report("b", "old"), waited=11)
    assert not served and lagging == ("b",)
    assert problem.startswith("front b lags: serves old, not " + NEW)


def test_a_front_that_refused_the_config_is_reported_at_once() -> None:
    refused = report("b", "old", error="nginx -t rejected the config")
    served, lagging, problem = verdict(report("a", NEW), refused)
    assert not served and lagging == ("b",)
    assert problem == "front b could not apply the config: nginx -t rejected the config"


def test_the_generation_changes_with_the_text_and_where_shards_are() -> None:
    assert generation("text v2", [("shard-1", "10.0.0.2:8000")]) == NEW
    assert generation("text v2", [("shard-1", "10.0.0.7:8000")]) != NEW
    assert generation("text v3", [("shard-1", "10.0.0.2:8000")]) != NEW


def test_reports_round_trip_through_their_fields() -> None:
    one = report("a", NEW, error="x")
    assert FrontReport.parse(one.fields()) == one
