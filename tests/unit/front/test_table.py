"""The routing table (pure): which shards are routable, which sessions need map entries."""

from __future__ import annotations

from autoscaler.engine.fleet import Fleet, ShardInstance
from autoscaler.front.table import (
    RouteShard,
    RouteTable,
    build_table,
    pinned_hosts,
    route_shards,
    route_table,
)
from autoscaler.loop.daemon import without_stopped
from autoscaler.loop.events import Event, Outcome
from chatscale_contract.beat import Beat, ReportedState

NOW = 1_000_000.0
SHARDS = (
    RouteShard("shard-10", "chatscale-shard-10:8000"),
    RouteShard("shard-2", "chatscale-shard-2:8000", accepting=False),
)


def test_route_shards_only_live_beating_shards() -> None:
    def b(sid: str, state: ReportedState, age: float = 1) -> Beat:
        return Beat(sid, f"{sid}:8000", state, 1, 50, 0, 0, NOW - age)

    def i(sid: str, running: bool = True) -> ShardInstance:
        return ShardInstance(sid, running, NOW - 100, f"{sid}:8000")

    fleet = Fleet(
        NOW,
        instances={s: i(s) for s in ("shard-1", "shard-2", "shard-3", "shard-4")}
        | {"shard-5": i("shard-5", running=False)},
        beats={
            "shard-1": b("shard-1", ReportedState.ACCEPTING),
            "shard-2": b("shard-2", ReportedState.FULL),
            "shard-3": b("shard-3", ReportedState.DRAINING),
            "shard-4": b("shard-4", ReportedState.ACCEPTING, age=60),  # stale
            "shard-5": b("shard-5", ReportedState.ACCEPTING),  # exited
        },
        owners={"s1": "shard-3"},
    )
    shards = route_shards(fleet, 20)
    assert [(s.id, s.in_ring, s.accepting) for s in shards] == [
        ("shard-1", True, True),
        ("shard-2", True, False),
        ("shard-3", False, False),
    ]
    table = route_table(fleet, 20)
    assert table.exceptions == {"s1": "shard-3"}, "a draining shard's sessions stay reachable"


def test_build_table_pins_off_ring_sessions() -> None:
    shards = SHARDS
    ring = RouteTable(shards).ring()
    owners = {f"s{i}": "shard-2" for i in range(50)} | {"gone": "shard-9"}
    table = build_table(shards, owners)
    assert "gone" not in table.exceptions  # held by a shard nginx cannot reach
    assert all(ring.owner(s) != "shard-2" for s in table.exceptions)
    assert {s for s in owners if s != "gone" and ring.owner(s) != "shard-2"} == set(
        table.exceptions
    )


def test_shard_names_are_pinned_to_the_addresses_the_runtime_reports() -> None:
    table = RouteTable(
        (
            RouteShard("shard-1", "demo-shard-1:8000"),
            RouteShard("shard-2", "demo-shard-2:8000"),
            RouteShard("shard-3", "127.0.0.1:8103"),  # already an address: nothing to pin
            RouteShard("shard-4", "demo-shard-4:8000"),
        )
    )
    where = {
        "shard-1": "10.0.1.7:8000",
        "shard-2": "demo-shard-2:8000",  # the runtime knows no address
        "shard-3": "127.0.0.1:8103",
        "shard-4": "10.0.1.9:9999",  # another port: not the same thing
    }
    assert pinned_hosts(table, where) == {"demo-shard-1": "10.0.1.7"}


def test_shards_stopped_in_a_pass_leave_the_table_it_publishes() -> None:
    """The pass's observation still shows a shard it stopped as running; its name no longer
    resolves, and nginx refuses a config that names it. A stop that failed keeps its shard."""
    ids = ("shard-1", "shard-2", "shard-3")
    fleet = Fleet(
        NOW,
        instances={s: ShardInstance(s, True, NOW - 100, f"{s}:8000") for s in ids},
        beats={s: Beat(s, f"{s}:8000", ReportedState.DRAINING, 0, 50, 0, 0, NOW) for s in ids},
    )
    events = [
        Event("stop", "shard-1", "drain complete", Outcome.OK, NOW),
        Event("stop", "shard-2", "drain complete", Outcome.FAILED, NOW, "timeout"),
        Event("drain", "shard-3", "recycle", Outcome.OK, NOW),
    ]
    assert [s.id for s in route_table(without_stopped(fleet, events), 20).shards] == [
        "shard-2",
        "shard-3",
    ]
    assert without_stopped(fleet, events[1:]) is fleet


def test_routed_shards_are_the_ring_and_the_exceptions_targets() -> None:
    """A drained shard leaves the ring; until its last exception is gone the fronts still send
    it requests (the engine does not stop it before)."""
    shards = (
        RouteShard("shard-1", "a:8000"),
        RouteShard("shard-2", "b:8000", in_ring=False, accepting=False),
        RouteShard("shard-3", "c:8000", in_ring=False, accepting=False),
    )
    assert RouteTable(shards, {"x": "shard-2"}).routed == {"shard-1", "shard-2"}
    assert RouteTable(shards).routed == {"shard-1"}
