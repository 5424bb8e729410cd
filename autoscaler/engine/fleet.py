"""One observation of the fleet as it was read, and its reduction to the engine's input.

`Fleet` is what a reconcile pass read from the runtime (`ShardInstance`s) and from Redis
(heartbeats, session sets, demand); `to_observed` turns it into the engine's `Observed`.
Purely computational, no side effects: the reading itself is `autoscaler.loop.observe`.
If either source could not be read, the fleet says so and the engine holds: missing data never
shrinks the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from autoscaler.engine.cluster import Cluster, room
from autoscaler.engine.model import Observed, ShardState, ShardView
from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.config import Config, parse_size
from chatscale_contract.ids import shard_number


@dataclass(frozen=True)
class ShardInstance:
    """One shard as the runtime sees it (a container, a Swarm service's task, a process)."""

    shard_id: str
    running: bool
    started_at: float
    """Epoch seconds the container or process started (for the boot timeout)."""
    addr: str
    """host:port nginx and other shards use to reach it (its stable name in the ring)."""
    endpoint: str = ""
    """host:port the autoscaler itself can reach it at (a container IP from the host);
    empty when `addr` works."""
    config_hash: str = ""
    memory_limit_bytes: int = 0
    """0 when the runtime sets no limit (local processes)."""
    detail: str = ""
    """The runtime's own words for its state (Swarm: the task state and the scheduler's
    message, e.g. "pending: no suitable node (insufficient resources on 3 nodes)")."""
    labels: dict[str, str] = field(default_factory=dict)
    waiting: bool = False
    """Not running yet because the runtime is still placing or preparing it (a Swarm task that
    is pending, assigned, preparing, starting)."""
    node: str = ""
    """The id of the machine it runs on, where the runtime has several (a Swarm node id)."""
    image_changed: bool = False
    """The shard image's name (shard.image) now names another image than the one this shard
    runs: a new build or pull under the same tag."""

    def outdated(self, fingerprint: str) -> bool:
        """Started with other shard settings than `fingerprint`, or from an older image."""
        return bool(self.outdated_by(fingerprint))

    def outdated_by(self, fingerprint: str) -> str:
        """What is older: "shard settings", "image", both joined by "and", or "" (current)."""
        settings = bool(self.config_hash and fingerprint and self.config_hash != fingerprint)
        older = [
            *(["shard settings"] if settings else []),
            *(["image"] if self.image_changed else []),
        ]
        return " and ".join(older)


@dataclass(frozen=True)
class Fleet:
    """Everything one observation read. `error` is set when it could not read it all."""

    now: float
    instances: dict[str, ShardInstance] = field(default_factory=dict)
    beats: dict[str, Beat] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """session id -> shard id, from the shards' session sets."""
    owned: dict[str, int] = field(default_factory=dict)
    """shard id -> size of its session set."""
    pending: int = 0
    orphans: tuple[str, ...] = ()
    error: str = ""
    cluster: Cluster | None = None
    """The nodes and what is reserved on them, where the runtime knows (Swarm)."""
    fresh_since: float = 0.0
    """Since when observations have been readable without a gap. Heartbeats that went missing
    while Redis was unreachable prove nothing about the shards."""
    activators: tuple[str, ...] = ()
    """Addresses of the live activators (sorted): nginx hands them what no shard can take."""


@dataclass(frozen=True)
class FleetLimits:
    """The settings that turn an observation into the engine's input."""

    max_sessions: int
    memory_limit_bytes: int
    heartbeat_timeout: float
    boot_timeout: float
    fingerprint: str = ""
    """The running config's shard settings (Config.fingerprint); "" marks nothing outdated."""

    @classmethod
    def of(cls, config: Config) -> FleetLimits:
        return cls(
            max_sessions=config.shard.max_sessions,
            memory_limit_bytes=parse_size(config.shard.memory_limit),
            heartbeat_timeout=config.heartbeat.timeout,
            boot_timeout=config.shard.boot_timeout,
            fingerprint=config.fingerprint(),
        )


def classify(
    instance: ShardInstance | None,
    beat: Beat | None,
    owned: int,
    now: float,
    limits: FleetLimits,
    fresh_since: float = 0.0,
) -> ShardState | None:
    """The engine's view of one shard; None if it is not ours to manage.

    - running with a fresh heartbeat: ready (or draining, as the shard reports);
    - running, silent, but started less than `boot_timeout` ago: starting;
    - not running yet because the runtime is still placing it: starting, however long it takes;
    - running and silent for longer, or not running at all: dead (it gets replaced);
    - no container or process, but sessions still recorded as its own: dead (they come back
      when it is replaced under the same id);
    - no container or process and nothing owned: not a shard to manage.
    """
    fresh = beat is not None and beat.fresh(now, limits.heartbeat_timeout)
    if instance is None:
        return ShardState.DEAD if owned > 0 else None
    if not instance.running and instance.waiting:
        # Being placed or prepared by the runtime (a Swarm task waiting for a node with room):
        # not dead, and replacing it would not make it start sooner. See `_notes`.
        return ShardState.STARTING
    if not instance.running:
        return ShardState.DEAD
    if fresh and beat is not None:
        return ShardState.DRAINING if beat.state == ReportedState.DRAINING else ShardState.READY
    if now - instance.started_at <= limits.boot_timeout:
        return ShardState.STARTING
    if now - fresh_since <= limits.heartbeat_timeout:
        # Redis was unreachable a moment ago: the shard had no chance to beat yet. Wait a
        # whole timeout of readable data before calling a running shard dead.
        return ShardState.STARTING
    return ShardState.DEAD


def to_observed(
    fleet: Fleet, limits: FleetLimits, routed: frozenset[str] = frozenset()
) -> Observed:
    """The engine's input from one observation; `routed`: the shards the fronts still route
    sessions to (`RouteTable.routed` of the config they all serve)."""
    max_sessions, memory = limits.max_sessions, limits.memory_limit_bytes
    if fleet.error:
        return Observed((), max_sessions, memory, fresh=False, stale_reason=fleet.error)
    views = []
    for shard_id in _known_ids(fleet):
        instance, beat = fleet.instances.get(shard_id), fleet.beats.get(shard_id)
        owned = fleet.owned.get(shard_id, 0)
        state = classify(instance, beat, owned, fleet.now, limits, fleet.fresh_since)
        if state is not None:
            view = _view(shard_id, state, beat, owned, fleet.now)
            outdated = instance is not None and instance.outdated(limits.fingerprint)
            views.append(replace(view, outdated=outdated, routed=shard_id in routed))
    space = room(fleet.cluster) if fleet.cluster is not None else None
    return Observed(
        tuple(views),
        max_sessions,
        memory,
        pending=fleet.pending,
        orphans=len(fleet.orphans),
        room=space.shards if space else None,
        room_reason=space.reason if space else "",
        notes=_notes(fleet, limits),
    )


def _notes(fleet: Fleet, limits: FleetLimits) -> tuple[str, ...]:
    """Shards the runtime has been placing for longer than a boot: say why, in its words."""
    return tuple(
        f"{i.shard_id} not placed after {fleet.now - i.started_at:.0f} s: {i.detail}"
        for i in sorted(fleet.instances.values(), key=lambda i: shard_number(i.shard_id))
        if i.waiting and not i.running and fleet.now - i.started_at > limits.boot_timeout
    )


def _known_ids(fleet: Fleet) -> list[str]:
    ids = set(fleet.instances) | {shard for shard, count in fleet.owned.items() if count}
    return sorted(ids, key=shard_number)


def _view(shard_id: str, state: ShardState, beat: Beat | None, owned: int, now: float) -> ShardView:
    if beat is None:
        return ShardView(shard_id, state, owned)
    # The registry's session set is the truth about ownership; a live heartbeat can lag it by
    # one interval, so the larger of the two is used (never under-count a busy shard).
    sessions = max(beat.sessions, owned)
    age = now - beat.started_at if beat.started_at else None
    return ShardView(
        shard_id,
        state,
        sessions,
        beat.memory_bytes,
        now - beat.ts,
        beat.draining_since,
        age,
        baseline_bytes=beat.baseline_bytes,
    )
