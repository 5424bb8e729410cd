"""Room in a cluster (pure): which nodes can take a shard, how many more fit, and the engine
starting only what fits, saying why."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.engine.cluster import Cluster, Node, matches, room
from autoscaler.engine.decide import decide
from autoscaler.engine.fleet import Fleet, FleetLimits, ShardInstance, classify, to_observed
from autoscaler.engine.model import ActionKind, History, Observed, ShardState, ShardView
from chatscale_contract.config import Buffer, Policy, ScaleUp

GIB = 1024**3
NOW = 1_000_000.0
ZONE_A = {"zone": "a", "chatscale": "shards"}


def node(
    nid: str,
    memory: int = 64,
    reserved: int = 0,
    ready: bool = True,
    active: bool = True,
    labels: dict[str, str] | None = None,
) -> Node:
    return Node(
        id=nid,
        hostname=f"host-{nid}",
        ready=ready,
        active=active,
        memory_bytes=memory * GIB,
        reserved_bytes=reserved * GIB,
        labels=ZONE_A if labels is None else labels,
    )


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("node.labels.zone == a", True),
        ("node.labels.zone==b", False),
        ("node.labels.zone != b", True),
        ("node.labels.missing == x", False),
        ("node.role == manager", False),
        ("node.hostname != host-n1", False),
        ("node.platform.os == linux", True),  # not visible here: the scheduler judges it
    ],
)
def test_constraints(constraint: str, expected: bool) -> None:
    assert matches(node("n1"), constraint) is expected


def test_room_counts_free_memory_of_eligible_nodes_only() -> None:
    cluster = Cluster(
        (
            node("n1", reserved=40),  # 24 free: 2 more
            node("n2"),  # 64 free: 6 more
            node("n3", ready=False),  # down
            node("n4", active=False),  # drained
            node("n5", labels={"chatscale": "no"}),  # constrained away
        ),
        reservation=10 * GIB,
        constraints=("node.labels.chatscale == shards",),
    )
    assert room(cluster).shards == 8


def test_a_full_cluster_says_how_much_it_holds_and_what_to_do() -> None:
    full = Cluster(
        (node("n1", reserved=60), node("n2", reserved=60), node("n3", reserved=55)), 10 * GIB
    )
    space = room(full)
    assert space.shards == 0
    assert space.reason == (
        "cluster full: 3 node(s) with 192 GiB hold 18 shard(s) reserving 10g each,"
        " and no node has 10g unreserved; add a node"
    )


def test_no_eligible_node_names_the_constraints() -> None:
    cluster = Cluster((node("n1", labels={}),), 10 * GIB, ("node.labels.chatscale == shards",))
    assert room(cluster).reason == (
        "cluster full: no ready, active node matches the constraints"
        " node.labels.chatscale == shards; add a node"
    )


def policy() -> Policy:
    return Policy(
        min_shards=1,
        max_shards=50,
        target_utilization=1.0,
        buffer=Buffer(slots=0, percent=0),
        scale_up=ScaleUp(max_step=10),
    )


def observed(sessions: int, space: int | None, reason: str = "") -> Observed:
    shard = ShardView("shard-1", ShardState.READY, 50)
    return Observed((shard,), 50, 10 * GIB, pending=sessions - 50, room=space, room_reason=reason)


def test_the_engine_starts_only_what_fits_and_says_why() -> None:
    plan = decide(observed(250, space=2), policy(), History(NOW - 10_000), NOW)
    assert [a.shard_id for a in plan.actions if a.kind == ActionKind.START] == [
        "shard-2",
        "shard-3",
    ]
    assert "only 2 more shard(s) fit; 2 wait for room" in plan.reasons
    plan = decide(observed(250, space=0, reason="cluster full: ..."), policy(), History(NOW), NOW)
    assert not plan.actions and "cluster full: ..." in plan.reasons
    plan = decide(observed(250, space=None), policy(), History(NOW), NOW)
    assert len(plan.actions) == 4, "no bound known: as many as needed (within max_step)"


LIMITS = FleetLimits(
    max_sessions=50, memory_limit_bytes=10 * GIB, heartbeat_timeout=20, boot_timeout=90
)


def test_a_shard_the_scheduler_has_not_placed_is_starting_however_long_and_noted() -> None:
    waiting = ShardInstance(
        "shard-2",
        False,
        NOW - 500,
        "demo-shard-2:8000",
        waiting=True,
        detail="pending: no suitable node (insufficient resources on 3 nodes)",
    )
    assert classify(waiting, None, 0, NOW, LIMITS) == ShardState.STARTING
    assert classify(replace(waiting, waiting=False), None, 0, NOW, LIMITS) == ShardState.DEAD
    seen = to_observed(Fleet(NOW, {"shard-2": waiting}), LIMITS)
    assert seen.notes == (
        "shard-2 not placed after 500 s: pending: no suitable node (insufficient resources on"
        " 3 nodes)",
    )
    assert (
        to_observed(Fleet(NOW, {"shard-2": replace(waiting, started_at=NOW - 5)}), LIMITS).notes
        == ()
    )


def test_the_observation_carries_the_clusters_room() -> None:
    cluster = Cluster((node("n1", reserved=44),), 10 * GIB)
    seen = to_observed(Fleet(NOW, cluster=cluster), LIMITS)
    assert seen.room == 2 and seen.room_reason == ""
    assert to_observed(Fleet(NOW), LIMITS).room is None
