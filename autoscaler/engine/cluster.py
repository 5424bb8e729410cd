"""How many more shards a cluster can place: nodes, their memory, what is reserved on them.

On Docker Swarm every shard's service reserves memory (`runtime.swarm.memory_reservation`), and
the scheduler places a task only on a node with that much unreserved memory that also matches
the placement constraints. Knowing the same, the engine starts only shards that can run, and
says "cluster full ... add a node" instead of leaving tasks pending forever.
Purely computational, no side effects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from chatscale_contract.config import Config, parse_size

GIB = 1024**3
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Node:
    """One Swarm node as the runtime read it."""

    id: str
    hostname: str
    ready: bool
    """Status.State is "ready" (a node that is down or unknown runs nothing)."""
    active: bool
    """Availability is "active" (paused and drained nodes take no new tasks)."""
    memory_bytes: int
    reserved_bytes: int = 0
    """Memory reserved by every task placed on it (any service's), as the scheduler counts."""
    labels: Mapping[str, str] = field(default_factory=dict)
    role: str = "worker"
    engine_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def free_bytes(self) -> int:
        return max(0, self.memory_bytes - self.reserved_bytes)


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    reservation: int
    """Bytes of memory each shard reserves."""
    constraints: tuple[str, ...] = ()
    """Placement constraints of the shard services, in Docker's syntax."""


@dataclass(frozen=True)
class Room:
    shards: int
    """How many more shards the scheduler can place now."""
    reason: str
    """Why no more, when `shards` is 0 (empty otherwise)."""


def shard_reservation(config: Config) -> int:
    """Bytes each shard reserves on a Swarm node: `runtime.swarm.memory_reservation`, by
    default the shard's whole memory limit, so no node is ever given more shards than it holds."""
    chosen = config.runtime.swarm.memory_reservation
    return parse_size(chosen if chosen is not None else config.shard.memory_limit)


def matches(node: Node, constraint: str) -> bool:
    """Whether `node` satisfies one constraint (`node.labels.zone == a`, `node.role != manager`).

    Attributes this function cannot see (e.g. node.platform.os) count as satisfied: the
    scheduler will judge those, and the shard would then wait with its message.
    """
    match = _CONSTRAINT.match(constraint)
    if match is None:
        return True
    attribute, op, expected = match.groups()
    value = _attribute(node, attribute)
    if value is None:
        return True
    return (value == expected) == (op == "==")


def _attribute(node: Node, attribute: str) -> str | None:
    simple = {"node.id": node.id, "node.hostname": node.hostname, "node.role": node.role}
    if attribute in simple:
        return simple[attribute]
    for prefix, labels in (("node.labels.", node.labels), ("engine.labels.", node.engine_labels)):
        if attribute.startswith(prefix):
            return labels.get(attribute.removeprefix(prefix), "")
    return None


def eligible(cluster: Cluster) -> list[Node]:
    """Nodes a new shard could be placed on: ready, active, matching every constraint."""
    return [
        n
        for n in cluster.nodes
        if n.ready and n.active and all(matches(n, c) for c in cluster.constraints)
    ]


def room(cluster: Cluster) -> Room:
    """How many more shards fit, and if none, why, in words an operator can act on."""
    nodes = eligible(cluster)
    shards = sum(n.free_bytes // cluster.reservation for n in nodes) if cluster.reservation else 0
    if shards > 0:
        return Room(shards, "")
    size = _size(cluster.reservation)
    if not nodes:
        which = "ready, active node matches the constraints " + ", ".join(cluster.constraints)
        if not cluster.constraints:
            which = "node is ready and active"
        return Room(0, f"cluster full: no {which}; add a node")
    memory = sum(n.memory_bytes for n in nodes)
    holds = sum(n.memory_bytes // cluster.reservation for n in nodes)
    return Room(
        0,
        f"cluster full: {len(nodes)} node(s) with {memory / GIB:.0f} GiB hold {holds} shard(s)"
        f" reserving {size} each, and no node has {size} unreserved; add a node",
    )


def _size(value: int) -> str:
    if value % GIB == 0:
        return f"{value // GIB}g"
    return f"{value / 1024**2:.0f}m"
