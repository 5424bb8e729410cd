"""Keep nginx and the published ring in step with the fleet (render, debounce, apply, publish).

The routing table is a pure function of the observed fleet: live shards (fresh heartbeat, running)
are routable; those not draining form the hash ring; sessions living off their ring owner become
map exceptions. nginx only reloads when that table changes, batched by the debouncer, and the ring
is published to Redis (for the shards' own placement) only once nginx serves it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.config import Config
from autoscaler.keys import Keys
from autoscaler.metrics import Metrics
from autoscaler.model import shard_number
from autoscaler.nginx_apply import Debouncer, NginxApplier, reloader_for
from autoscaler.nginx_render import RenderError, RouteShard, RouteTable, build_table, render
from autoscaler.observe import Fleet

log = logging.getLogger(__name__)
RETRY_AFTER_FAILURE = 10.0


def route_shards(fleet: Fleet, config: Config) -> list[RouteShard]:
    """Shards nginx should reach: running, with a fresh heartbeat. Purely computational."""
    shards = []
    for shard_id in sorted(fleet.beats, key=shard_number):
        beat = fleet.beats[shard_id]
        instance = fleet.instances.get(shard_id)
        fresh = beat.fresh(fleet.now, config.heartbeat.timeout)
        if instance is None or not instance.running or not fresh or not beat.addr:
            continue
        draining = beat.state == "draining"
        shards.append(RouteShard(shard_id, beat.addr, not draining, beat.state == "accepting"))
    return shards


def route_table(fleet: Fleet, config: Config) -> RouteTable:
    """Purely computational, no side effects."""
    return build_table(route_shards(fleet, config), fleet.owners)


def endpoints(fleet: Fleet, table: RouteTable) -> dict[str, str]:
    """Where each routed shard really is right now (container IP, or its address).

    nginx resolves shard names only when it loads a config, so a shard replaced under the same
    name (new container, new IP) needs a reload even though the config text is unchanged.
    Purely computational.
    """
    found = {}
    for shard in table.shards:
        instance = fleet.instances.get(shard.id)
        found[shard.id] = instance.endpoint if instance and instance.endpoint else shard.addr
    return found


class Front:
    def __init__(self, config: Config, client: aioredis.Redis, metrics: Metrics):
        self.config = config
        self.redis = client
        self.keys = Keys(config.redis.key_prefix)
        self.metrics = metrics
        self.template_dir = Path(config.nginx.template_dir)
        self.applier: NginxApplier | None = None
        if config.nginx.enabled:
            self.applier = NginxApplier(
                config.nginx, reloader_for(config.nginx), confirm_url=config.nginx.front_url
            )
        self.debouncer = Debouncer.from_settings(config.nginx.reload)
        self.table: RouteTable | None = None
        """The table wanted now."""
        self.applied: RouteTable | None = None
        """The table nginx serves (as far as we know)."""
        self.error = ""
        self._applied_endpoints: dict[str, str] = {}
        self._wanted_key: tuple[str, dict[str, str]] | None = None
        self._retry_at = 0.0

    async def update(self, fleet: Fleet, dry_run: bool) -> None:
        """Called once per pass; applies the wanted table when it is due."""
        table = route_table(fleet, self.config)
        where = endpoints(fleet, table)
        self.table = table
        self.metrics.exceptions.set(len(table.exceptions))
        current = self.applied is not None and table.version == self.applied.version
        moved = current and where != self._applied_endpoints
        if dry_run or (current and not moved):
            return
        if self._wanted_key != (table.version, where):
            self._wanted_key = (table.version, where)
            self.debouncer.changed()  # each new change restarts the quiet period
        if time.monotonic() < self._retry_at or not self.debouncer.due():
            return
        ok = await self._apply(table, force=moved) and await self._publish(table)
        self.debouncer.applied()
        if ok:
            self.applied, self.error, self._applied_endpoints = table, "", where
        else:
            # Try the same table again after a pause: the failure may have been passing.
            self._wanted_key = None
            self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE

    async def _apply(self, table: RouteTable, force: bool) -> bool:
        if self.applier is None:
            return True
        try:
            text = render(table, self.config.nginx, self.template_dir)
        except (RenderError, OSError) as exc:
            return self._failed(f"render failed: {exc}")
        result = await self.applier.apply(text, table.version, force=force)
        if result.error:
            return self._failed(result.error)
        if result.reloaded:
            self.metrics.nginx_reloads.inc()
            log.info(
                "nginx reloaded: %d shard(s), %d exception(s), version %s",
                len(table.shards),
                len(table.exceptions),
                table.version,
            )
        return True

    def _failed(self, error: str) -> bool:
        self.error = error
        self.metrics.nginx_failures.inc()
        log.error("nginx not updated (the last good config keeps serving): %s", error)
        return False

    async def _publish(self, table: RouteTable) -> bool:
        """Tell the shards the ring nginx now uses (for their own placement of new sessions)."""
        ring = table.ring()
        members = [{"id": shard, "addr": addr} for shard, addr in ring.members]
        payload = json.dumps({"version": ring.fingerprint, "shards": members})
        try:
            await self.redis.set(self.keys.ring, payload)
        except RedisError as exc:
            return self._failed(f"could not publish the ring: {exc}")
        return True
