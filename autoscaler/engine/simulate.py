"""Replay a load trace through the real engine with a simulated clock (`autoscaler simulate`).

The model of a fleet is deliberately simple, so that what the output shows is the policy, not the
simulator: shards become ready `start_delay` seconds after they are started; sessions spread evenly
over ready shards up to `max_sessions` each; a draining shard keeps the sessions it had until
`drain_seconds` have passed, then is empty. Demand that no ready shard can hold is "unmet"; the
engine sees it as sessions waiting for room, as the real shards report refused creates. With a
simulated cluster (simcluster.py) shards are also placed on nodes, the engine sees its room,
and nodes fail and come back as the trace says.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from autoscaler.engine.cluster import shard_reservation
from autoscaler.engine.decide import decide
from autoscaler.engine.model import (
    ActionKind,
    History,
    Observed,
    Plan,
    ShardState,
    ShardView,
)
from autoscaler.engine.simcluster import NodeSpec, SimCluster
from chatscale_contract.config import Config, parse_size
from chatscale_contract.ids import shard_number


@dataclass(frozen=True)
class TracePoint:
    t: float
    sessions: int
    memory_fraction: float | None = None
    nodes: int | None = None
    """Nodes up at `t` (a simulated cluster only); None: all of them."""


COLUMNS = ("t", "sessions", "memory_fraction", "nodes")


class TraceError(ValueError):
    """The trace file is malformed; the message names every bad line."""


def parse_trace(text: str, source: str = "trace") -> list[TracePoint]:
    """Parse CSV `t,sessions[,memory_fraction][,nodes]`. Reports every bad line at once."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if header[:2] != ["t", "sessions"] or not set(header) <= set(COLUMNS):
        raise TraceError(
            f"{source}:1: header must be t,sessions[,memory_fraction][,nodes], got {header}"
        )
    points: list[TracePoint] = []
    errors: list[str] = []
    for number, row in enumerate(reader, start=2):
        try:
            point = _parse_row({k.strip(): (v or "").strip() for k, v in row.items() if k})
        except ValueError as exc:
            errors.append(f"{source}:{number}: {exc}")
            continue
        if points and point.t <= points[-1].t:
            errors.append(
                f"{source}:{number}: t must increase ({point.t:g} after {points[-1].t:g})"
            )
            continue
        points.append(point)
    if not points and not errors:
        errors.append(f"{source}: no data lines")
    if errors:
        raise TraceError("\n".join(errors))
    return points


def _parse_row(row: dict[str, str]) -> TracePoint:
    try:
        t = float(row["t"])
    except ValueError:
        raise ValueError(f"t: {row['t']!r} is not a number") from None
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"t: {row['t']!r} must be a finite number >= 0")
    try:
        sessions = int(row["sessions"])
    except ValueError:
        raise ValueError(f"sessions: {row['sessions']!r} is not a whole number") from None
    if sessions < 0:
        raise ValueError(f"sessions: {sessions} must be >= 0")
    return TracePoint(t, sessions, _fraction(row.get("memory_fraction")), _nodes(row.get("nodes")))


def _fraction(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"memory_fraction: {raw!r} is not a number") from None
    if not 0 <= value <= 1:
        raise ValueError(f"memory_fraction: {value:g} must be between 0 and 1")
    return value


def _nodes(raw: str | None) -> int | None:
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"nodes: {raw!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"nodes: {value} must be >= 0")
    return value


@dataclass
class _SimShard:
    id: str
    ready_at: float
    number: int = 0
    draining_since: float | None = None
    held: int = 0
    """Sessions kept while draining."""


@dataclass
class Summary:
    peak_shards: int = 0
    shard_seconds: float = 0.0
    unmet_seconds: float = 0.0
    """Seconds during which sessions exceeded what ready shards could hold."""
    scale_events: int = 0
    """Shards started, drained or stopped."""
    flaps: int = 0
    """Scale-downs followed by a scale-up (or the reverse) within the scale-down window."""
    cluster_full_seconds: float = 0.0
    """Seconds during which sessions went unmet and the cluster had no room for a shard."""
    ticks: int = 0
    _last_direction: tuple[float, int] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "peak_shards": self.peak_shards,
            "shard_seconds": round(self.shard_seconds, 3),
            "unmet_seconds": round(self.unmet_seconds, 3),
            "scale_events": self.scale_events,
            "flaps": self.flaps,
            "cluster_full_seconds": round(self.cluster_full_seconds, 3),
            "ticks": self.ticks,
        }


class Simulation:
    """A fleet driven by `decide` under a simulated clock."""

    def __init__(
        self,
        config: Config,
        start_delay: float,
        drain_seconds: float,
        cluster: SimCluster | None = None,
    ):
        self.config = config
        self.cluster = cluster
        self.start_delay = start_delay
        self.drain_seconds = drain_seconds
        self.max_sessions = config.shard.max_sessions
        self.memory_limit = parse_size(config.shard.memory_limit)
        self.shards: dict[str, _SimShard] = {}
        self.history: History | None = None
        self.summary = Summary()
        self._views: dict[tuple[str, ShardState, int, int, float | None], ShardView] = {}
        self._share: dict[str, int] = {}
        """Sessions each shard held at the last observation, so a drain keeps exactly those."""

    def tick(self, t: float, point: TracePoint, dt: float) -> dict[str, object]:
        if self.history is None:
            self.history = History(started_at=t)
        self._reschedule(t, point)
        observed, unmet = self._observe(t, point)
        plan = decide(observed, self.config.policy, self.history, t)
        keep = max(
            self.config.policy.scale_down.stabilization, self.config.policy.scale_up.stabilization
        )
        self.history = self.history.record(t, plan.recommendation, keep, observed.busy)
        self._apply(plan, t, point)
        self._account(t, dt, unmet, plan, observed)
        record: dict[str, object] = {
            "t": t,
            "sessions": point.sessions,
            "shards": len(self.shards),
            "desired": plan.desired,
            "unmet": unmet,
            "actions": [str(a) for a in plan.actions],
            "reasons": list(plan.reasons),
        }
        if self.cluster is not None:
            record["nodes_up"] = self.cluster.up(point.nodes)
            record["unplaced"] = sum(1 for s in self.shards if s not in self.cluster.placed)
        return record

    def _reschedule(self, t: float, point: TracePoint) -> None:
        """Shards of nodes that went down start again elsewhere when there is room, as Swarm
        reschedules them; those without room wait (and never become ready)."""
        if self.cluster is None:
            return
        for shard_id in self.cluster.evict(point.nodes):
            self.shards[shard_id].ready_at = math.inf
        for shard in sorted(self.shards.values(), key=attrgetter("number")):
            if shard.id not in self.cluster.placed and self.cluster.place(shard.id, point.nodes):
                shard.ready_at = t + self.start_delay

    def _observe(self, t: float, point: TracePoint) -> tuple[Observed, int]:
        draining: list[_SimShard] = []
        ready: list[_SimShard] = []
        starting: list[_SimShard] = []
        for shard in sorted(self.shards.values(), key=attrgetter("number")):
            if shard.draining_since is None:
                (ready if shard.ready_at <= t else starting).append(shard)
            else:
                if t - shard.draining_since >= self.drain_seconds:
                    shard.held = 0
                draining.append(shard)
        held = min(sum(s.held for s in draining), point.sessions)
        remaining = point.sessions - held
        placed = min(remaining, len(ready) * self.max_sessions)
        memory = int((point.memory_fraction or 0.0) * self.memory_limit)
        views = [self._view(s, ShardState.DRAINING, s.held, memory) for s in draining]
        for index, shard in enumerate(ready):
            share = placed // len(ready) + (1 if index < placed % len(ready) else 0)
            views.append(self._view(shard, ShardState.READY, share, memory))
        views += [self._view(s, ShardState.STARTING, 0, 0) for s in starting]
        self._share = {v.id: v.sessions for v in views}
        unmet = remaining - placed
        space = self.cluster.room(point.nodes) if self.cluster is not None else None
        observed = Observed(
            tuple(views),
            self.max_sessions,
            self.memory_limit,
            pending=unmet,
            room=space.shards if space else None,
            room_reason=space.reason if space else "",
        )
        return observed, unmet

    def _view(self, shard: _SimShard, state: ShardState, sessions: int, memory: int) -> ShardView:
        # Views are immutable, so one per distinct state is reused across ticks: on a 24-hour
        # trace at 1 s ticks most shards look the same from one tick to the next.
        key = (shard.id, state, sessions, memory, shard.draining_since)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = ShardView(*key[:4], 0.0, shard.draining_since)
        return view

    def _apply(self, plan: Plan, t: float, point: TracePoint) -> None:
        for action in plan.actions:
            if action.kind == ActionKind.START:
                number = shard_number(action.shard_id)
                ready_at = t + self.start_delay
                if self.cluster is not None and not self.cluster.place(
                    action.shard_id, point.nodes
                ):
                    ready_at = math.inf  # waits for a node with room (see _reschedule)
                self.shards[action.shard_id] = _SimShard(action.shard_id, ready_at, number)
            elif action.kind == ActionKind.STOP:
                self.shards.pop(action.shard_id, None)
                if self.cluster is not None:
                    self.cluster.remove(action.shard_id)
            elif action.kind == ActionKind.DRAIN:
                shard = self.shards[action.shard_id]
                shard.draining_since = t
                shard.held = self._share.get(action.shard_id, 0)
            elif action.kind == ActionKind.CANCEL_DRAIN:
                self.shards[action.shard_id].draining_since = None
                self.shards[action.shard_id].held = 0

    def _account(self, t: float, dt: float, unmet: int, plan: Plan, observed: Observed) -> None:
        s = self.summary
        s.ticks += 1
        if unmet > 0 and observed.room == 0:
            s.cluster_full_seconds += dt
        s.peak_shards = max(s.peak_shards, len(self.shards))
        s.shard_seconds += len(self.shards) * dt
        if unmet > 0:
            s.unmet_seconds += dt
        ups = sum(1 for a in plan.actions if a.kind in (ActionKind.START, ActionKind.CANCEL_DRAIN))
        downs = sum(1 for a in plan.actions if a.kind == ActionKind.DRAIN)
        downs += sum(
            1 for a in plan.actions if a.kind == ActionKind.STOP and "scale down" in a.reason
        )
        s.scale_events += sum(1 for a in plan.actions if a.kind != ActionKind.CANCEL_DRAIN)
        for direction, count in ((1, ups), (-1, downs)):
            if not count:
                continue
            last = s._last_direction
            window = self.config.policy.scale_down.stabilization
            if last is not None and last[1] != direction and t - last[0] < window:
                s.flaps += 1
            s._last_direction = (t, direction)


def run(
    config: Config,
    points: list[TracePoint],
    tick: float,
    start_delay: float,
    drain_seconds: float,
    nodes: NodeSpec | None = None,
) -> Iterator[dict[str, object]]:
    """Yield one record per tick, then `{"summary": {...}}`. With `nodes`, shards are placed on
    a simulated cluster of that many nodes (capacity planning)."""
    cluster = SimCluster(nodes, shard_reservation(config)) if nodes is not None else None
    sim = Simulation(config, start_delay, drain_seconds, cluster)
    index = 0
    steps = math.floor((points[-1].t - points[0].t) / tick + _EPS) + 1
    for step in range(steps):
        t = points[0].t + step * tick
        while index + 1 < len(points) and points[index + 1].t <= t + _EPS:
            index += 1
        yield sim.tick(t, points[index], tick)
    yield {"summary": sim.summary.as_dict()}


_EPS = 1e-9
