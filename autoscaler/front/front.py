"""Keep nginx and the published ring in step with the fleet (render, debounce, apply, publish).

nginx only reloads when the routing table (`table`) changes, batched by the debouncer, and the
ring is published to Redis (for the shards' own placement) only once nginx is confirmed to serve
it. What is applied, wanted and owed lives in one pure `FrontState` (state.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.engine.fleet import Fleet
from autoscaler.front.apply import ApplyResult, NginxApplier
from autoscaler.front.debounce import Debouncer
from autoscaler.front.reload import reloader_for
from autoscaler.front.render import RenderError, render
from autoscaler.front.state import FrontState, Target
from autoscaler.front.table import RouteTable, endpoints, route_table
from autoscaler.metrics import Metrics
from chatscale_contract.clock import Clock
from chatscale_contract.config import NginxSettings
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
RETRY_AFTER_FAILURE = 10.0


class Applier(Protocol):
    """Puts a rendered config into service (`apply.NginxApplier`)."""

    async def apply(
        self, text: str, version: str | None = None, force: bool = False
    ) -> ApplyResult: ...


def make_applier(nginx: NginxSettings) -> Applier | None:
    """The applier the settings ask for; None when chatscale does not manage nginx."""
    if not nginx.enabled:
        return None
    return NginxApplier(nginx, reloader_for(nginx), confirm_url=nginx.front_url)


class Front:
    def __init__(
        self,
        nginx: NginxSettings,
        heartbeat_timeout: float,
        applier: Applier | None,
        client: aioredis.Redis,
        keys: Keys,
        metrics: Metrics,
        clock: Clock,
    ):
        self.nginx = nginx
        self.heartbeat_timeout = heartbeat_timeout
        self.applier = applier
        self.redis = client
        self.keys = keys
        self.metrics = metrics
        self.clock = clock
        self.template_dir = Path(nginx.template_dir)
        self.debouncer = Debouncer.from_settings(nginx.reload, clock.monotonic)
        self.state = FrontState()
        self.table: RouteTable | None = None
        """The table wanted now (the last pass's)."""
        self.applied: RouteTable | None = None
        """The table nginx was last confirmed to serve."""

    @property
    def error(self) -> str:
        return self.state.error

    async def update(self, fleet: Fleet, dry_run: bool) -> None:
        """Called once per pass; applies the wanted table when it is due."""
        table = route_table(fleet, self.heartbeat_timeout)
        self.table = table
        self.metrics.exceptions.set(len(table.exceptions))
        if dry_run:
            return
        state = self.state.want(Target.of(table.version, endpoints(fleet, table)))
        if not state.in_step and (state.wanted != self.state.wanted or not self.debouncer.pending):
            self.debouncer.changed()  # each new change restarts the quiet period (a retry too)
        self.state = state
        if not state.due(self.clock.monotonic()) or not self.debouncer.due():
            return
        error = await self._apply(table, force=state.force) or await self._publish(table)
        self.debouncer.applied()
        if error:
            self._failed(error)
            retry_at = self.clock.monotonic() + RETRY_AFTER_FAILURE
            self.state = state.failed(error, retry_at)
        else:
            self.state, self.applied = state.succeeded(), table

    async def _apply(self, table: RouteTable, force: bool) -> str:
        """Render and put into service; the error, or "" once nginx serves `table`."""
        if self.applier is None:
            return ""
        try:
            text = render(table, self.nginx, self.template_dir)
        except (RenderError, OSError) as exc:
            return f"render failed: {exc}"
        result = await self.applier.apply(text, table.version, force=force)
        if result.reloaded:
            self.metrics.nginx_reloads.inc()
            log.info(
                "nginx reloaded: %d shard(s), %d exception(s), version %s",
                len(table.shards),
                len(table.exceptions),
                table.version,
            )
        return result.error or ""

    def _failed(self, error: str) -> None:
        self.metrics.nginx_failures.inc()
        log.error("nginx not updated (the last good config keeps serving): %s", error)

    async def _publish(self, table: RouteTable) -> str:
        """Tell the shards the ring nginx now uses (for their own placement of new sessions)."""
        ring = table.ring()
        members = [{"id": shard, "addr": addr} for shard, addr in ring.members]
        payload = json.dumps({"version": ring.fingerprint, "shards": members})
        try:
            await self.redis.set(self.keys.ring, payload)
        except RedisError as exc:
            return f"could not publish the ring: {exc}"
        return ""
