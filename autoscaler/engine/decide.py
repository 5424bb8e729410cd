"""The scaling decision: `decide(observed, policy, history, now) -> Plan`.

Purely computational, no side effects: the same inputs always give the same plan, so every rule is
tested with tables and properties and replayed against traces by `autoscaler simulate`. The daemon
does the I/O before (observe) and after (act).

Rules, in the order they apply:
1. Stale or missing data: hold. Nothing is started, drained or stopped on a guess.
2. Requirement: ceil((used slots + sessions waiting for room + buffer) / (max_sessions x
   target_utilization)), where a shard over the memory watermark uses all its slots; a memory
   requirement from the average session size is computed too, and the larger wins. Bounded to
   [min_shards raised by open schedules, max_shards].
3. Stabilization: up to the lowest recommendation of the scale-up window (0 s: at once), down only
   to the highest recommendation of the scale-down window, and only once history covers it.
4. Actions: replace dead shards; cancel drains before starting new shards; scale down by draining
   the emptiest shards (stop only empty ones); stop draining shards once empty.
5. Recycling (policy.recycle): when the fleet is calm, drain the next due shard (outdated,
   older than max_age, or grown past max_growth_per_session). With recycle.max_surge (default 1)
   an extra shard starts first and the drain waits until it is ready, so a new image or new
   settings that never come up hold the rollout with the old shards serving; with max_surge 0
   it drains at once if the others have room for its sessions, else starts one more first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoscaler.engine.model import (
    Action,
    ActionKind,
    History,
    Observed,
    Plan,
    ShardState,
    ShardView,
)
from autoscaler.engine.schedules import raised_floor
from chatscale_contract.config import Policy
from chatscale_contract.ids import shard_id, shard_number

_EPS = 1e-9
_MIB = 1024 * 1024


def _ceil(x: float) -> int:
    # Guard against 2.0000000001 becoming 3 through float division.
    return max(0, math.ceil(x - _EPS))


@dataclass(frozen=True)
class Requirement:
    shards: int
    reasons: tuple[str, ...]


def requirement(observed: Observed, policy: Policy) -> Requirement:
    """Shards needed for the current load, before bounds and stabilization."""
    max_sessions = observed.max_sessions
    sessions = observed.sessions + observed.waiting
    buffer = max(policy.buffer.slots, _ceil(sessions * policy.buffer.percent / 100))
    hot = policy.memory_high_watermark * observed.memory_limit_bytes
    full_by_memory = [s for s in observed.shards if hot > 0 and s.memory_bytes >= hot]
    used = sessions + sum(
        max_sessions - s.sessions for s in full_by_memory if s.sessions < max_sessions
    )
    per_shard = max_sessions * policy.target_utilization
    by_sessions = _ceil((used + buffer) / per_shard)
    waiting = f" (incl. {observed.waiting} waiting for room)" if observed.waiting else ""
    reasons = [
        f"{sessions} sessions{waiting} + {buffer} buffer"
        + (
            f" ({len(full_by_memory)} shard(s) full by memory count as full)"
            if full_by_memory
            else ""
        )
        + f" need {by_sessions} shard(s) at {per_shard:g} sessions each"
    ]
    by_memory = _memory_requirement(observed, policy, sessions + buffer)
    if by_memory > by_sessions:
        reasons.append(f"memory needs {by_memory} shard(s) (larger requirement wins)")
    return Requirement(max(by_sessions, by_memory), tuple(reasons))


def _memory_requirement(observed: Observed, policy: Policy, demand_sessions: int) -> int:
    """Shards needed so that the average session size times demand stays under the watermark."""
    measured = [s for s in observed.shards if s.state == ShardState.READY and s.memory_bytes > 0]
    sessions = sum(s.sessions for s in measured)
    if observed.memory_limit_bytes <= 0 or sessions == 0:
        return 0
    per_session = sum(s.memory_bytes for s in measured) / sessions
    usable = observed.memory_limit_bytes * policy.memory_high_watermark
    return _ceil(demand_sessions * per_session / usable)


def bounded(need: int, policy: Policy, now: float) -> tuple[int, list[str]]:
    """Clamp to [min_shards raised by open schedules, max_shards], saying why when it clamps."""
    floor, schedule = raised_floor(policy.min_shards, policy.schedules, now)
    if need < floor:
        source = f"schedule {schedule!r}" if schedule else "min_shards"
        return floor, [f"raised to {floor} by {source}"]
    if need > policy.max_shards:
        return policy.max_shards, [f"capped at max_shards {policy.max_shards} (needed {need})"]
    return need, []


def _asleep(observed: Observed, policy: Policy, history: History, now: float) -> str:
    """Why the fleet should be at zero shards now ("" if it should not): idle for
    policy.idle_to_zero, and no schedule window open that holds a floor."""
    if policy.idle_to_zero is None or observed.busy:
        return ""
    idle = history.idle_for(now)
    if idle < policy.idle_to_zero or raised_floor(0, policy.schedules, now)[0] > 0:
        return ""
    return (
        f"no session and no waiting request for {idle:.0f} s"
        f" (policy.idle_to_zero {policy.idle_to_zero:g} s): to zero shards until a request comes"
    )


def stabilized(
    recommendation: int, current: int, policy: Policy, history: History, now: float
) -> tuple[int, list[str]]:
    """The count to converge to now, damped by the stabilization windows."""
    if recommendation > current:
        window = policy.scale_up.stabilization
        lowest = min([*history.within(now, window), recommendation]) if window else recommendation
        if lowest > current:
            return lowest, []
        return current, [f"scale-up to {recommendation} waits for its {window:g} s window"]
    if recommendation < current:
        window = policy.scale_down.stabilization
        if now - history.started_at < window:
            return current, [f"no scale-down until {window:g} s of history exist"]
        highest = max([*history.within(now, window), recommendation])
        if highest < current:
            return highest, [f"highest recommendation over {window:g} s is {highest}"]
        return current, [f"scale-down held: recommendation was {highest} within {window:g} s"]
    return current, []


def decide(observed: Observed, policy: Policy, history: History, now: float) -> Plan:
    """Plan the fleet for this moment. Purely computational, no side effects."""
    groups = _group(observed.shards)
    dead, draining = groups[ShardState.DEAD], groups[ShardState.DRAINING]
    live = groups[ShardState.STARTING] + groups[ShardState.READY]
    current = len(live) + len(dead)
    if not observed.fresh:
        reason = f"holding: data is stale ({observed.stale_reason or 'unknown reason'})"
        return Plan(current, current, current, reasons=(reason,), held=True)
    need = requirement(observed, policy)
    asleep = _asleep(observed, policy, history, now)
    stable_reasons: list[str]
    if asleep:
        recommendation, desired, bound_reasons, stable_reasons = 0, 0, [asleep], []
    else:
        recommendation, bound_reasons = bounded(need.shards, policy, now)
        desired, stable_reasons = stabilized(recommendation, current, policy, history, now)
        # Bounds are hard: a floor raised by a schedule, or a lowered max_shards, applies at
        # once whatever the stabilization windows say.
        desired = min(max(desired, bounded(0, policy, now)[0]), policy.max_shards)
    taken = {shard_number(s.id) for s in observed.shards}
    # While a dead shard is being brought back (or its replacement, still starting, restores
    # its sessions) those sessions are in flight; shrinking now would move them twice.
    recovering = dead + [s for s in groups[ShardState.STARTING] if s.sessions > 0]
    recycle = _recycle(
        groups, observed, policy, (recommendation, desired, current), bool(recovering)
    )
    if recycle.wanted:
        # No scale-down while shards are recycled: the room they need (and the extra shards
        # started first) must stay.
        desired = min(max(desired, recycle.floor), policy.max_shards)
    recycling = {s.id for s in draining if _due(s, policy)}
    grow = _grow(draining, desired - current, policy, taken, observed.room, recycling)
    cancelled = {a.shard_id for a in grow if a.kind == ActionKind.CANCEL_DRAIN}
    shrink = [] if recovering or recycle.wanted else _shrink(live, current - desired, policy)
    # Replacements are bounded like starts: a whole fleet silent at once more likely means a
    # problem on our side than that many crashes, and a bounded pace limits the damage.
    replace = dead[: policy.scale_up.max_step]
    adoptable = _adoptable(observed, groups)
    actions = [
        *(Action(ActionKind.REPLACE, s.id, _dead_reason(s)) for s in replace),
        *grow,
        *shrink,
        *recycle.actions,
        *_finish_drains(draining, cancelled, adoptable, policy, now),
    ]
    reasons = (*need.reasons, *bound_reasons, *stable_reasons, *_overdue(draining, policy, now))
    waits = _stop_waits(draining, adoptable, policy, now)
    reasons = (*reasons, *recycle.reasons, *waits)
    reasons = (*reasons, *_room_reasons(observed, grow, desired - current), *observed.notes)
    if desired < current and recovering:
        reasons = (*reasons, "scale-down waits until replaced shards have their sessions back")
    if len(dead) > len(replace):
        reasons = (*reasons, f"{len(dead) - len(replace)} more dead shard(s) replaced next pass")
    return Plan(desired, recommendation, current, tuple(actions), reasons)


def _group(shards: tuple[ShardView, ...]) -> dict[ShardState, list[ShardView]]:
    """Shards by state, each list in shard-number order (so plans are deterministic)."""
    groups: dict[ShardState, list[ShardView]] = {state: [] for state in ShardState}
    for shard in sorted(shards, key=lambda s: shard_number(s.id)):
        groups[shard.state].append(shard)
    return groups


def _dead_reason(shard: ShardView) -> str:
    age = (
        "no heartbeat"
        if shard.heartbeat_age is None
        else f"heartbeat {shard.heartbeat_age:.0f} s old"
    )
    return f"dead ({age}); same id so its {shard.sessions} session(s) come back"


def _grow(
    draining: list[ShardView],
    deficit: int,
    policy: Policy,
    taken: set[int],
    room: int | None,
    recycling: set[str],
) -> list[Action]:
    """Cancel drains first (their shards are warm and hold sessions; never a recycle's), then
    start new shards, as many as the runtime has room for."""
    if deficit <= 0:
        return []
    cancellable = [s for s in draining if s.id not in recycling]
    fullest_first = sorted(cancellable, key=lambda s: -s.sessions)
    actions = [
        Action(
            ActionKind.CANCEL_DRAIN, s.id, "load returned; cancelling a drain beats a cold start"
        )
        for s in fullest_first[:deficit]
    ]
    starts = min(deficit - len(actions), policy.scale_up.max_step)
    if room is not None:
        starts = min(starts, room)
    for number in _free_numbers(taken, starts):
        actions.append(Action(ActionKind.START, shard_id(number), f"scale up by {deficit}"))
    return actions


@dataclass(frozen=True)
class _Recycling:
    wanted: bool = False
    """A shard is due and may be recycled now or as soon as there is room."""
    floor: int = 0
    """Shards the fleet keeps meanwhile (the missing ones start): more than it has when extra
    shards start first, so the recycled shard's sessions have somewhere to go."""
    actions: tuple[Action, ...] = ()
    reasons: tuple[str, ...] = ()


def _due(shard: ShardView, policy: Policy) -> str:
    """Why `shard` should be recycled ("" when it should not)."""
    recycle = policy.recycle
    if recycle.outdated and shard.outdated:
        return "recycle: started with other shard settings or an older image (rolling update)"
    if recycle.max_age is not None and shard.age is not None and shard.age > recycle.max_age:
        return f"recycle: running {shard.age / 3600:.1f} h (max_age {recycle.max_age:g} s)"
    return _grown(shard, recycle.max_growth_per_session)


def _grown(shard: ShardView, bound_mib: float | None) -> str:
    """Why `shard` grew too much per session since its baseline ("" when it did not)."""
    per_session = shard.growth_per_session_bytes
    if shard.state == ShardState.DRAINING and shard.growth_bytes is not None:
        # Once empty, a shard drained for its growth must stay due (its memory stays up), or
        # the load could cancel its drain and hand it new sessions.
        per_session = shard.growth_bytes // max(shard.sessions, 1)
    if bound_mib is None or per_session is None or per_session <= bound_mib * _MIB:
        return ""
    return (
        f"recycle: memory grew {per_session / _MIB:.0f} MiB per session since start"
        f" (max_growth_per_session {bound_mib:g} MiB)"
    )


def _recycle(
    groups: dict[ShardState, list[ShardView]],
    observed: Observed,
    policy: Policy,
    counts: tuple[int, int, int],
    recovering: bool,
) -> _Recycling:
    """Drain the next due shard (outdated first, then the oldest), never beyond max_at_once.

    With max_surge (the default) extra shards start first and a drain waits until one is
    ready; else (max_surge 0) it drains as soon as the other ready shards can take its
    sessions, asking for one more shard first when they cannot. `counts`: the shards the load
    needs (the bounded recommendation, and the desired count after stabilization) and the
    shards that count as capacity now."""
    ready = groups[ShardState.READY]
    due = sorted(
        (s for s in ready if _due(s, policy)), key=lambda s: (not s.outdated, -(s.age or 0))
    )
    under_way = sum(1 for s in groups[ShardState.DRAINING] if _due(s, policy))
    if not due or policy.recycle.paused:
        return _Recycling(reasons=("recycling paused",) if due else ())
    if policy.recycle.max_surge:
        return _surge_first(groups, due, under_way, observed, policy, counts)
    _, desired, current = counts
    if recovering or groups[ShardState.STARTING] or desired > current:
        why = f"recycle of {due[0].id} waits: the fleet is busy"
        return _Recycling(True, current, reasons=(why,))
    if under_way >= policy.recycle.max_at_once:
        return _Recycling(True, current, reasons=(f"{len(due)} more shard(s) due for recycling",))
    shard = due[0]
    free = sum(max(0, observed.max_sessions - s.sessions) for s in ready if s.id != shard.id)
    if free < shard.sessions:
        if current >= policy.max_shards:
            return _Recycling(reasons=(f"recycle of {shard.id} waits: no room, max_shards",))
        why = f"one more shard first: {shard.id}'s {shard.sessions} session(s) need room"
        return _Recycling(True, current + 1, reasons=(why,))
    drain = Action(ActionKind.DRAIN, shard.id, _due(shard, policy))
    return _Recycling(True, current, actions=(drain,))


def _surge_first(
    groups: dict[ShardState, list[ShardView]],
    due: list[ShardView],
    under_way: int,
    observed: Observed,
    policy: Policy,
    counts: tuple[int, int, int],
) -> _Recycling:
    """max_surge >= 1: up to max_surge shards beyond what the load needs (drains under way use
    up the allowance), and a drain only while nothing is dead, restoring or starting and a
    shard that is not due (a new one) is ready. A new shard that never comes up (starting,
    then dead and replaced, again and again) so holds the rollout with every due shard still
    serving. Without a ready new shard, or without room for the due shard's sessions, one
    more shard starts first."""
    recycle = policy.recycle
    recommendation, desired, current = counts
    shard = due[0]
    held = _held(groups)
    if held:
        why = f"rollout held: {held}; recycle of {shard.id} waits"
        return _Recycling(True, current, reasons=(why,))
    if desired > current or recommendation > current:
        why = f"recycle of {shard.id} waits: the fleet grows for the load"
        return _Recycling(True, current, reasons=(why,))
    ready = groups[ShardState.READY]
    proven = [s for s in ready if not _due(s, policy)]
    free = sum(max(0, observed.max_sessions - s.sessions) for s in ready if s.id != shard.id)
    extra = max(0, min(recycle.max_surge - under_way, len(due)))
    floor = max(current, recommendation + extra)
    if under_way >= recycle.max_at_once:
        return _Recycling(True, floor, reasons=(f"{len(due)} more shard(s) due for recycling",))
    if current > recommendation and proven and free >= shard.sessions:
        drain = Action(ActionKind.DRAIN, shard.id, _due(shard, policy))
        return _Recycling(True, current, actions=(drain,))
    if not proven or free < shard.sessions:
        floor = max(floor, current + 1)
    if floor <= current:
        why = f"recycle of {shard.id} waits: {under_way} drain(s) under way use max_surge"
        return _Recycling(True, current, reasons=(why,))
    if current >= policy.max_shards:
        # No extra shard fits: replace in place as max_surge 0 does (the drain is the one
        # unavailable shard max_at_once allows), or the fleet at its maximum never updates.
        if free >= shard.sessions:
            why = f"{_due(shard, policy)}; in place: no room for an extra shard (max_shards)"
            return _Recycling(True, current, actions=(Action(ActionKind.DRAIN, shard.id, why),))
        why = f"recycle of {shard.id} waits: no room for an extra shard first, max_shards"
        return _Recycling(reasons=(why,))
    why = (
        f"rollout: {floor - current} extra shard(s) first (recycle.max_surge);"
        f" {shard.id} is drained once one is ready"
    )
    return _Recycling(True, floor, reasons=(why,))


def _held(groups: dict[ShardState, list[ShardView]]) -> str:
    """Why no shard may be drained for a recycle now ("" when one may): a dead shard (being
    replaced), one restoring its sessions, or a new one that has not come up."""
    dead, starting = groups[ShardState.DEAD], groups[ShardState.STARTING]
    if dead:
        return f"{dead[0].id} is dead (replaced; nothing is drained until it is back)"
    if not starting:
        return ""
    shard = starting[0]
    if shard.sessions:
        return f"{shard.id} is restoring {shard.sessions} session(s)"
    return f"new shard {shard.id} has not come up"


def _room_reasons(observed: Observed, grow: list[Action], deficit: int) -> list[str]:
    """Why fewer shards start than the fleet needs, when the runtime is out of room."""
    started = sum(1 for a in grow if a.kind == ActionKind.START)
    wanted = deficit - (len(grow) - started)
    if observed.room is None or started >= wanted or started < observed.room:
        return []  # all started, or the pace (scale_up.max_step) and not the room held them
    if observed.room == 0:
        return [observed.room_reason or "no room for another shard"]
    return [f"only {observed.room} more shard(s) fit; {wanted - started} wait for room"]


def _free_numbers(taken: set[int], count: int) -> list[int]:
    """The lowest shard numbers not in use, so ids (and their nginx names) get reused."""
    numbers: list[int] = []
    candidate = 1
    while len(numbers) < count:
        if candidate not in taken:
            numbers.append(candidate)
        candidate += 1
    return numbers


def _shrink(live: list[ShardView], surplus: int, policy: Policy) -> list[Action]:
    """Retire the emptiest live shards: stop empty ones, drain the rest. Never stop a busy one."""
    if surplus <= 0:
        return []
    # Among equally empty shards the highest number goes first.
    candidates = sorted(live, key=lambda s: (s.sessions, -shard_number(s.id)))
    actions = []
    for shard in candidates[: min(surplus, policy.scale_down.max_step)]:
        if shard.sessions == 0:
            actions.append(Action(ActionKind.STOP, shard.id, "scale down: empty shard"))
        else:
            reason = f"scale down: emptiest shard ({shard.sessions} sessions) moves them away"
            actions.append(Action(ActionKind.DRAIN, shard.id, reason))
    return actions


def _finish_drains(
    draining: list[ShardView], skip: set[str], adoptable: int, policy: Policy, now: float
) -> list[Action]:
    return [
        Action(ActionKind.STOP, s.id, "drain complete: no sessions left")
        for s in draining
        if s.sessions == 0 and s.id not in skip and not _awaits(s, adoptable, policy, now)
    ]


def _awaits(shard: ShardView, adoptable: int, policy: Policy, now: float) -> bool:
    """An empty drained shard waits before its stop while sessions it may have released can be
    adopted: it holds requests for them until another shard has them (shard/handoff.py), so
    stopped now it would take those requests with it, and the stop would hold up the pass that
    adopts them; not with no room anywhere (its slot may be what they wait for). It also waits
    while the fronts still route to it (it forwards what it gets to the sessions' new owners;
    stopped, it would refuse those requests until the fronts reload). Never past the drain
    deadline (a released session that is never adopted, a front that never confirms, must not
    keep it forever)."""
    since = shard.draining_since
    overdue = since is not None and now - since > policy.drain_deadline
    return (adoptable > 0 or shard.routed) and not overdue


def _adoptable(observed: Observed, groups: dict[ShardState, list[ShardView]]) -> int:
    """Released sessions a ready shard has room for now."""
    free = sum(max(0, observed.max_sessions - s.sessions) for s in groups[ShardState.READY])
    return min(observed.orphans, free)


def _stop_waits(
    draining: list[ShardView], adoptable: int, policy: Policy, now: float
) -> tuple[str, ...]:
    reasons = []
    for shard in draining:
        if shard.sessions or not _awaits(shard, adoptable, policy, now):
            continue
        until = [f"{adoptable} released session(s) are adopted"] if adoptable else []
        until += ["the fronts no longer route to it"] if shard.routed else []
        reasons.append(f"{shard.id} drained: stopped once {' and '.join(until)}")
    return tuple(reasons)


def _overdue(draining: list[ShardView], policy: Policy, now: float) -> list[str]:
    return [
        f"drain of {s.id} overdue: {s.sessions} session(s) left after {policy.drain_deadline:g} s;"
        " it keeps its sessions until they move"
        for s in draining
        if s.sessions > 0
        and s.draining_since is not None
        and now - s.draining_since > policy.drain_deadline
    ]
