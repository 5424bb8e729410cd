"""The autoscaler daemon: observe -> decide -> act, once per interval, as the leader.

`Daemon.reconcile()` runs exactly one pass and can be called directly (tests drive the loop that
way); `autoscaler.loop.service` runs passes on an APScheduler interval, plus at the start of every
scheduled window and whenever a shard reports that it became full. The daemon is an async context
manager: its Redis and HTTP clients live exactly as long as the `async with` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.engine.decide import decide
from autoscaler.engine.fleet import Fleet, FleetLimits, to_observed
from autoscaler.engine.model import ActionKind, History, Observed, Plan, ShardState
from autoscaler.engine.schedules import VALIDATION
from autoscaler.front.front import Front
from autoscaler.loop.act import Actor, ActSettings
from autoscaler.loop.events import Event, EventLog, Outcome
from autoscaler.loop.leader import LeaderLock
from autoscaler.loop.observe import Observer
from autoscaler.loop.samples import Samples
from autoscaler.metrics import Metrics
from autoscaler.redisconn import connect
from autoscaler.runtimes import make_runtime
from autoscaler.runtimes.base import Runtime
from chatscale_contract.clock import SYSTEM, Clock
from chatscale_contract.config import Config
from chatscale_contract.configload import ConfigError, load_config
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
DECISIONS_KEPT = 50
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)
REDIS_TIMEOUT = 5.0


@dataclass(frozen=True)
class Decision:
    """One reconcile pass as the status page shows it."""

    ts: float
    plan: Plan
    leader: bool
    duration: float
    events: tuple[Event, ...] = ()


@dataclass
class State:
    """What the daemon knows between passes (all of it rebuilt from Redis/runtime on restart,
    except the recommendation history, which only delays scale-down after a restart)."""

    history: History
    fleet: Fleet | None = None
    observed: Observed | None = None
    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    samples: Samples = field(default_factory=Samples)
    """The last hour of sessions, capacity, shards and memory (the status page's charts)."""
    leader: bool = False
    config_error: str = ""
    last_error: str = ""


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        runtime: Runtime | None = None,
        holder: str | None = None,
        clock: Clock = SYSTEM,
    ):
        self.config = config
        self.config_path = config_path
        self.runtime = runtime or make_runtime(config)
        self.clock = clock
        self.on_reload: Callable[[], None] | None = None
        """Called after a config was reloaded (the service reschedules its jobs)."""
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.state = State(History(started_at=clock.time()))
        self._pass_lock = asyncio.Lock()
        self._lease_until = 0.0
        self._config_mtime = self._mtime()
        self.redis: aioredis.Redis
        self.http: aiohttp.ClientSession

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        # Timeouts: an unanswering Redis fails a pass (which then holds) instead of hanging it.
        self.redis = connect(
            self.config.redis.url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self.http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        self._build(self.config)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.wait_idle()
        with contextlib.suppress(RedisError, OSError):
            if self.state.leader:
                await self.lock.release()
        await self.http.close()
        await self.redis.aclose()

    def reconfigure(self, config: Config) -> None:
        """Run with `config` from the next pass on (a reload, or a test changing the policy).

        What was observed so far stays: the recommendation history and since when the data has
        been readable (a reload must not restart the wait for fresh heartbeats).
        """
        self.config = config
        self.runtime.reconfigure(config)
        self._build(config)

    def _build(self, config: Config) -> None:
        """The parts that depend on the config, each given only what it needs."""
        keys = Keys(config.redis.key_prefix)
        self.keys = keys
        self.limits = FleetLimits.of(config)
        self.events = EventLog(self.redis, keys)
        previous = getattr(self, "observer", None)
        self.observer = Observer(self.redis, self.runtime, keys, self.clock)
        if previous is not None:
            self.observer.fresh_since = previous.fresh_since
        self.actor = Actor(
            ActSettings.of(config),
            self.runtime,
            self.redis,
            keys,
            self.http,
            self.events,
            self.metrics,
            self.clock,
        )
        self.front = Front(
            config.nginx, config.heartbeat.timeout, self.redis, keys, self.metrics, self.clock
        )
        self.lock = LeaderLock(self.redis, keys.leader, self.holder, config.reconcile.leader_ttl)

    async def wait_idle(self) -> None:
        """Return once no pass is running (a pass in progress finishes its actions)."""
        async with self._pass_lock:
            return

    # --- one pass ---------------------------------------------------------------------------

    async def reconcile(self) -> Decision | None:
        """One observe -> decide -> act pass. Never raises: a failing pass is logged and the
        next one runs."""
        async with self._pass_lock:
            started = self.clock.monotonic()
            try:
                decision = await self._pass()
            except Exception as exc:
                self.metrics.reconcile_failures.inc()
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("reconcile pass failed")
                return None
            finally:
                self.metrics.reconcile_seconds.observe(self.clock.monotonic() - started)
            self.state.last_error = ""
            return decision

    async def _pass(self) -> Decision:
        started = self.clock.monotonic()
        self._maybe_reload()
        leader = await self._lead()
        fleet = await self.observer.observe()
        applied = self.front.applied
        observed = to_observed(fleet, self.limits, applied.routed if applied else frozenset())
        now = fleet.now
        policy = self.config.policy
        plan = decide(observed, policy, self.state.history, now)
        keep = max(policy.scale_down.stabilization, policy.scale_up.stabilization)
        if observed.fresh:
            history = self.state.history
            self.state.history = history.record(now, plan.recommendation, keep, observed.busy)
        events: list[Event] = []
        if leader:
            # Orphans before the plan: a stop in it can take the shard's whole stop timeout,
            # and a drained shard holds requests for the sessions it released until they are
            # adopted (shard/handoff.py): adopted after the stop, those requests died with it.
            # (Until the first front update there is no ring to place them by.)
            adopt_first = self.front.table is not None
            if adopt_first:
                events += await self._adopt(fleet)
            events += await self.actor.execute(plan, fleet, policy.dry_run, self.leading)
            if not fleet.error and self.leading():
                await self.front.update(without_stopped(fleet, events), policy.dry_run)
                if not adopt_first:
                    events += await self._adopt(fleet)
        self.state.fleet, self.state.observed = fleet, observed
        self.state.samples.add(now, observed)
        self._export(observed, plan, leader)
        duration = self.clock.monotonic() - started
        decision = Decision(now, plan, leader, duration, tuple(events))
        self.state.decisions.appendleft(decision)
        return decision

    async def _adopt(self, fleet: Fleet) -> list[Event]:
        """Released sessions that should run, each asked of a shard with room (once a pass)."""
        table = self.front.table
        if fleet.error or not fleet.orphans or table is None:
            return []
        return await self.actor.adopt_orphans(fleet, table.ring(), self.config.policy.dry_run)

    def follow_up(self) -> float | None:
        """Seconds until this leader has work due that should not wait for the next interval
        (a front config whose batching window ends); None when there is none. Never 0: work
        already due that this pass did not do (stale data) waits for the next interval."""
        due = self.front.due_in() if self.state.leader else None
        return due if due else None

    async def renew_forever(self) -> None:
        """Keep the lock alive even while a long pass (a slow stop) runs."""
        while True:
            await self.clock.sleep(self.config.reconcile.leader_ttl / 3)
            if self.state.leader:
                await self._lead()

    def leading(self) -> bool:
        """True while the lock is surely still ours: its TTL, counted from when it was asked
        for, has not run out (minus a margin for clock drift between us and Redis)."""
        margin = min(1.0, self.config.reconcile.leader_ttl / 5)
        return self.clock.monotonic() < self._lease_until - margin

    async def _lead(self) -> bool:
        asked = self.clock.monotonic()
        try:
            leader = await self.lock.acquire_or_renew()
        except (RedisError, OSError) as exc:
            log.warning("leader lock unreadable: %s", exc)
            leader = False
        self._lease_until = asked + self.config.reconcile.leader_ttl if leader else 0.0
        if leader != self.state.leader:
            log.info("%s leadership (%s)", "took" if leader else "lost", self.holder)
        self.state.leader = leader
        self.metrics.leader.set(1 if leader else 0)
        return leader

    def _export(self, observed: Observed, plan: Plan, leader: bool) -> None:
        m = self.metrics
        m.sessions.set(observed.sessions)
        m.pending.set(observed.pending)
        m.desired.set(plan.desired)
        m.capacity.set(observed.capacity)
        for state in ShardState:
            m.shards.labels(state=state.value).set(
                sum(1 for s in observed.shards if s.state == state)
            )

    # --- config reload ----------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: reload at the start of the next pass."""
        self._config_mtime = -1.0

    def _mtime(self) -> float:
        if self.config_path is None:
            return 0.0
        try:
            return self.config_path.stat().st_mtime
        except OSError:
            return 0.0

    def _maybe_reload(self) -> None:
        mtime = self._mtime()
        if self.config_path is None or mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            new = load_config(self.config_path, context=VALIDATION)
        except ConfigError as exc:
            self.state.config_error = str(exc)
            log.error("config reload rejected; keeping the running config:\n%s", exc)
            return
        self.state.config_error = ""
        if new == self.config:
            return
        if (new.redis.url, new.runtime, new.activator) != (
            self.config.redis.url,
            self.config.runtime,
            self.config.activator,
        ):
            self.state.config_error = (
                "redis.url, runtime and activator changes need a restart; kept the old config"
            )
            log.error(self.state.config_error)
            return
        log.info("config reloaded from %s", self.config_path)
        self.reconfigure(new)
        if self.on_reload is not None:
            self.on_reload()


def without_stopped(fleet: Fleet, events: list[Event]) -> Fleet:
    """`fleet` less the shards this pass stopped. A stopped container's name no longer resolves
    and nginx refuses a whole config naming one ("host not found in upstream"), so the fronts
    kept the last good config, which still routed to the stopped shard, until a retry 10 s on:
    every request for its sessions failed meanwhile (the Docker rolling-update test saw it)."""
    gone = {e.shard for e in events if e.kind == ActionKind.STOP and e.outcome == Outcome.OK}
    if not gone:
        return fleet
    running = {k: v for k, v in fleet.instances.items() if k not in gone}
    return replace(fleet, instances=running)
