"""A simulated cluster for capacity planning: identical nodes, shards placed on them, failures.

`autoscaler simulate --nodes 3 --node-memory 64g` places every shard the engine starts on the up
node with the most unreserved memory, as Swarm's scheduler spreads them; a trace column `nodes`
says how many nodes are up at each moment, and the shards of a node that goes down are placed
again elsewhere when there is room (ready `start_delay` later, like a restart), or wait.
The engine sees the cluster's room exactly as it does on Swarm (`cluster.room`).
Purely computational, no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoscaler.engine.cluster import Cluster, Node, Room, room


@dataclass(frozen=True)
class NodeSpec:
    count: int
    memory_bytes: int


@dataclass
class SimCluster:
    spec: NodeSpec
    reservation: int
    """Bytes each shard reserves."""
    placed: dict[str, int] = field(default_factory=dict)
    """shard id -> index of the node it runs on."""

    def up(self, nodes_up: int | None) -> int:
        """Nodes up now: the first `nodes_up` of them (all when the trace does not say)."""
        return self.spec.count if nodes_up is None else min(nodes_up, self.spec.count)

    def place(self, shard_id: str, nodes_up: int | None) -> bool:
        """Put `shard_id` on the up node with the most room; False if none has room for it."""
        used = self._used()
        candidates = [
            i for i in range(self.up(nodes_up)) if self._free(i, used) >= self.reservation
        ]
        if not candidates:
            return False
        self.placed[shard_id] = max(candidates, key=lambda i: (self._free(i, used), -i))
        return True

    def evict(self, nodes_up: int | None) -> list[str]:
        """Take the shards of nodes that are down off them; returns their ids."""
        up = self.up(nodes_up)
        lost = sorted(s for s, node in self.placed.items() if node >= up)
        for shard_id in lost:
            del self.placed[shard_id]
        return lost

    def remove(self, shard_id: str) -> None:
        self.placed.pop(shard_id, None)

    def room(self, nodes_up: int | None) -> Room:
        used = self._used()
        nodes = tuple(
            Node(
                id=f"node-{i + 1}",
                hostname=f"node-{i + 1}",
                ready=i < self.up(nodes_up),
                active=True,
                memory_bytes=self.spec.memory_bytes,
                reserved_bytes=used.get(i, 0) * self.reservation,
            )
            for i in range(self.spec.count)
        )
        return room(Cluster(nodes, self.reservation))

    def _used(self) -> dict[int, int]:
        used: dict[int, int] = {}
        for node in self.placed.values():
            used[node] = used.get(node, 0) + 1
        return used

    def _free(self, node: int, used: dict[int, int]) -> int:
        return self.spec.memory_bytes - used.get(node, 0) * self.reservation
