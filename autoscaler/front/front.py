"""Keep the fronts and the published ring in step with the fleet, once per pass.

The leading autoscaler renders nginx.conf from the routing table and hands it to every front
through Redis (`Keys.front_config`, plus a nudge); the agent beside each nginx applies it
(agent.py) and reports the generation it serves. Only once every live front serves it is the
ring published to the shards (`Keys.ring`), for their own placement of new sessions. Changes are
batched by the debouncer. What is wanted, handed over and served lives in one pure `FrontState`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.engine.fleet import Fleet
from autoscaler.front.debounce import Debouncer
from autoscaler.front.fronts import FrontReport, Verdict, generation, judge
from autoscaler.front.render import RenderError, render
from autoscaler.front.state import FrontState, Target
from autoscaler.front.table import RouteTable, endpoints, pinned_hosts, route_table
from autoscaler.metrics import Metrics
from chatscale_contract.clock import Clock
from chatscale_contract.config import NginxSettings
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
RETRY_AFTER_FAILURE = 10.0
"""Seconds before a config that could not be rendered or handed over is tried again."""


class Front:
    def __init__(
        self,
        nginx: NginxSettings,
        heartbeat_timeout: float,
        client: aioredis.Redis,
        keys: Keys,
        metrics: Metrics,
        clock: Clock,
    ):
        self.nginx = nginx
        self.heartbeat_timeout = heartbeat_timeout
        self.redis = client
        self.keys = keys
        self.metrics = metrics
        self.clock = clock
        self.template_dir = Path(nginx.template_dir)
        self.debouncer = Debouncer.from_settings(nginx.reload, clock.monotonic)
        self.state = FrontState()
        self.fronts: tuple[FrontReport, ...] = ()
        """Every front's last report (live or not), as read on the last pass."""
        self.table: RouteTable | None = None
        """The table wanted now (the last pass's)."""
        self.applied: RouteTable | None = None
        """The table every live front was last confirmed to serve."""
        self._published: RouteTable | None = None

    @property
    def error(self) -> str:
        return self.state.error

    def due_in(self) -> float | None:
        """Seconds until a config waiting to be handed over is due (batching, or a retry after
        a failure); None if none waits. The service runs a pass then, not at its next interval."""
        if not self.state.to_publish:
            return None
        wait = self.debouncer.wait() or 0.0
        return max(wait, self.state.retry_at - self.clock.monotonic(), 0.0)

    async def update(self, fleet: Fleet, dry_run: bool) -> None:
        """Called once per pass by the leader; hands over and confirms when due."""
        table = route_table(fleet, self.heartbeat_timeout)
        self.table = table
        self.metrics.exceptions.set(len(table.exceptions))
        self.fronts = await self._reports()
        if dry_run:
            return
        state = self.state.want(Target.of(table.version, endpoints(fleet, table)))
        if state.to_publish and (state.wanted != self.state.wanted or not self.debouncer.pending):
            self.debouncer.changed()  # each new change restarts the quiet period (a retry too)
        self.state = state
        now = self.clock.monotonic()
        if state.may_publish(now) and self.debouncer.due():
            self.debouncer.applied()
            error, generation = await self._hand_over(table, state)
            if error:
                self._failed(error)
                self.state = state.failed(error, now + RETRY_AFTER_FAILURE)
                return
            self.state, self._published = state.handed_over(now, generation), table
        if self.state.awaiting:
            await self._confirm(now)

    async def _hand_over(self, table: RouteTable, state: FrontState) -> tuple[str, str]:
        """Render the wanted table and publish it for the fronts: (error or "", generation)."""
        if not self.nginx.enabled:
            return "", ""
        assert state.wanted is not None
        try:
            text = render(table, self.nginx, self.template_dir)
        except (RenderError, OSError) as exc:
            return f"render failed: {exc}", ""
        made = generation(text, state.wanted.endpoints)
        config = {
            "generation": made,
            "version": table.version,
            "text": text,
            "hosts": json.dumps(pinned_hosts(table, dict(state.wanted.endpoints))),
            "ts": repr(self.clock.time()),
        }
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.front_config, mapping=config)
                pipe.publish(self.keys.front_nudge, made)
                await pipe.execute()
        except RedisError as exc:
            return f"could not publish the front config: {exc}", ""
        log.info(
            "front config %s published: %d shard(s), %d exception(s)",
            made,
            len(table.shards),
            len(table.exceptions),
        )
        return "", made

    async def _confirm(self, now: float) -> None:
        state = self.state
        assert state.published is not None and self._published is not None
        verdict = self._verdict(state, now)
        if not verdict.served:
            if verdict.problem and verdict.problem != state.error:
                self._failed(verdict.problem)
            self.state = state.waiting(verdict.problem)
            return
        error = await self._publish_ring(self._published)
        if error:
            self._failed(error)
            self.state = state.failed(error, state.retry_at)
            return
        self.metrics.nginx_reloads.inc()
        self.state, self.applied = state.served(), self._published
        if not verdict.live and self.nginx.enabled:
            log.warning("no front is live: the ring is published without a front to confirm it")

    def _verdict(self, state: FrontState, now: float) -> Verdict:
        if not self.nginx.enabled:
            return Verdict(True, ())
        assert state.published is not None
        return judge(
            self.fronts,
            state.generation,
            now=self.clock.time(),
            waited=now - state.published_at,
            front_timeout=self.nginx.front_timeout,
            lag_bound=self.nginx.confirm_timeout,
        )

    async def _reports(self) -> tuple[FrontReport, ...]:
        """Every front's report; expired ones (a front that went away) drop out."""
        try:
            ids = await self.redis.zrange(self.keys.fronts, 0, -1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for front_id in ids:
                    pipe.hgetall(self.keys.front(front_id))
                rows = await pipe.execute()
        except RedisError as exc:
            log.warning("front reports unreadable: %s", exc)
            return self.fronts
        reports = []
        for front_id, raw in zip(ids, rows, strict=True):
            try:
                if raw:
                    reports.append(FrontReport.parse(raw))
            except (KeyError, ValueError) as exc:
                # One damaged report must not hide the others: that front counts as silent
                # (its agent rewrites the whole hash every second).
                log.warning("front report of %s unreadable, skipped: %s", front_id, exc)
        return tuple(reports)

    def _failed(self, error: str) -> None:
        self.metrics.nginx_failures.inc()
        log.error("fronts not updated (their last good config keeps serving): %s", error)

    async def _publish_ring(self, table: RouteTable) -> str:
        """Tell the shards the ring the fronts now use (for their own placement)."""
        ring = table.ring()
        members = [{"id": shard, "addr": addr} for shard, addr in ring.members]
        payload = json.dumps({"version": ring.fingerprint, "shards": members})
        try:
            await self.redis.set(self.keys.ring, payload)
        except RedisError as exc:
            return f"could not publish the ring: {exc}"
        return ""
