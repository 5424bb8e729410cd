"""Act: carry out a plan's actions through the runtime and the shards' admin endpoints.

Each action is recorded as an event with its reason and outcome. A failed action is logged and
reported; the next pass sees the world again and decides afresh (level-triggered), so nothing here
retries beyond a bounded schedule at the I/O boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.engine.fleet import Fleet
from autoscaler.engine.model import Action, ActionKind, Plan
from autoscaler.loop.events import Event, EventLog, Outcome
from autoscaler.metrics import Metrics
from autoscaler.runtimes.base import Runtime, RuntimeFailure
from chatscale_contract.clock import Clock
from chatscale_contract.config import Config
from chatscale_contract.hops import ADOPT
from chatscale_contract.keys import Keys
from chatscale_contract.placement import place
from chatscale_contract.ring import Ring

log = logging.getLogger(__name__)
RETRY_DELAYS = (0.5, 1.0, 2.0)
"""Backoff of one I/O call in an action; then the action fails and the next pass decides."""
REPLACE_STOP_TIMEOUT = 5.0
"""A dead shard is not draining anything; it gets little time to stop before it is replaced."""
ADOPT_PER_PASS = 20


class ActionFailed(Exception):
    pass


@dataclass(frozen=True)
class ActSettings:
    """The settings acting needs."""

    stop_timeout: float
    """Seconds a stopping shard gets to hand its sessions off."""
    api_key: str = ""
    """Sent as X-Api-Key to the shards' admin and session endpoints."""

    @classmethod
    def of(cls, config: Config) -> ActSettings:
        return cls(config.shard.stop_timeout, config.shard.env.get("API_KEY", ""))


class Actor:
    def __init__(
        self,
        settings: ActSettings,
        runtime: Runtime,
        client: aioredis.Redis,
        keys: Keys,
        http: aiohttp.ClientSession,
        events: EventLog,
        metrics: Metrics,
        clock: Clock,
    ):
        self.settings = settings
        self.runtime = runtime
        self.redis = client
        self.keys = keys
        self.http = http
        self.events = events
        self.metrics = metrics
        self.clock = clock

    async def execute(
        self, plan: Plan, fleet: Fleet, dry_run: bool, leading: Callable[[], bool]
    ) -> list[Event]:
        """Run every action in order; one failing does not stop the others. Stops early if
        leadership is lost mid-plan, so two daemons never act at once."""
        done = []
        for action in plan.actions:
            if not leading():
                log.warning("leadership lost; the rest of the plan is left to the new leader")
                break
            if dry_run:
                outcome, detail = Outcome.DRY_RUN, ""
            else:
                outcome, detail = await self._run(action, fleet)
            event = Event(
                action.kind.value,
                action.shard_id,
                action.reason,
                outcome,
                self.clock.time(),
                detail,
            )
            self.metrics.scale_events.labels(kind=action.kind.value, outcome=outcome.value).inc()
            done.append(event)
            await self._record(event)
        return done

    async def _run(self, action: Action, fleet: Fleet) -> tuple[Outcome, str]:
        handlers: dict[ActionKind, Callable[[str, Fleet], Awaitable[None]]] = {
            ActionKind.START: self._start,
            ActionKind.REPLACE: self._replace,
            ActionKind.STOP: self._stop,
            ActionKind.DRAIN: self._drain,
            ActionKind.CANCEL_DRAIN: self._undrain,
        }
        try:
            await handlers[action.kind](action.shard_id, fleet)
        except (ActionFailed, RuntimeFailure, RedisError, aiohttp.ClientError, TimeoutError) as exc:
            log.error("%s failed: %s", action, exc)
            return Outcome.FAILED, str(exc)
        except Exception as exc:  # a bug in one action must not keep the others from running
            log.exception("%s failed unexpectedly", action)
            return Outcome.FAILED, f"{type(exc).__name__}: {exc}"
        log.info("%s", action)
        return Outcome.OK, ""

    async def _start(self, shard_id: str, fleet: Fleet) -> None:
        await self.runtime.start(shard_id)

    async def _replace(self, shard_id: str, fleet: Fleet) -> None:
        await self.runtime.replace(shard_id, REPLACE_STOP_TIMEOUT)

    async def _stop(self, shard_id: str, fleet: Fleet) -> None:
        # The plan was made from an observation a moment old; check again right before acting,
        # because a shard that has a session must never be stopped.
        owned = await self.redis.scard(self.keys.shard_sessions(shard_id))
        if owned:
            raise ActionFailed(f"{shard_id} owns {owned} session(s) now; not stopping it")
        await self.runtime.stop(shard_id, self.settings.stop_timeout)
        # Forget the shard only if it left nothing behind: a session claimed in the meantime
        # and not released must stay visible (the shard then shows as dead and is replaced).
        if await self.redis.scard(self.keys.shard_sessions(shard_id)):
            raise ActionFailed(f"{shard_id} stopped but still owns sessions; it will be replaced")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.shard(shard_id))
            pipe.zrem(self.keys.shards, shard_id)
            await pipe.execute()

    async def _drain(self, shard_id: str, fleet: Fleet) -> None:
        await self._admin(shard_id, fleet, "/admin/drain")

    async def _undrain(self, shard_id: str, fleet: Fleet) -> None:
        await self._admin(shard_id, fleet, "/admin/undrain")

    async def _admin(self, shard_id: str, fleet: Fleet, path: str) -> None:
        url = f"http://{self._endpoint(shard_id, fleet)}{path}"
        for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
            try:
                async with self.http.post(url, headers=self._headers()) as resp:
                    if resp.status < 300:
                        return
                    detail = f"{resp.status} {await resp.text()}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = str(exc)
            log.warning("POST %s attempt %d failed: %s", url, attempt, detail)
            if delay is None:
                raise ActionFailed(f"POST {path} to {shard_id}: {detail}")
            await self.clock.sleep(delay)

    def _endpoint(self, shard_id: str, fleet: Fleet) -> str:
        instance = fleet.instances.get(shard_id)
        if instance is not None and instance.endpoint:
            return instance.endpoint
        beat = fleet.beats.get(shard_id)
        if beat is not None and beat.addr:
            return beat.addr
        if instance is not None:
            return instance.addr
        raise ActionFailed(f"no address known for {shard_id}")

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"X-Api-Key": key} if key else {}

    async def adopt_orphans(self, fleet: Fleet, ring: Ring, dry_run: bool) -> list[Event]:
        """Ask a live shard with room to take each released session that should still run.

        The shard is picked as a new session's would be (ring owner, else the next with room);
        the receiving shard checks again and places it itself if the picture changed.
        """
        events = []
        for sid in fleet.orphans[:ADOPT_PER_PASS]:
            target = place(ring, sid, lambda shard: _has_room(fleet, shard))
            if target is None:
                break
            if dry_run:
                outcome, detail = Outcome.DRY_RUN, ""
            else:
                outcome, detail = await self._adopt(sid, target, fleet)
            event = Event(
                "adopt",
                target,
                f"session {sid} was released while it should run",
                outcome,
                self.clock.time(),
                detail,
            )
            events.append(event)
            await self._record(event)
        return events

    async def _adopt(self, sid: str, shard_id: str, fleet: Fleet) -> tuple[Outcome, str]:
        try:
            url = f"http://{self._endpoint(shard_id, fleet)}/api/sessions/{sid}"
            # Only while it still exists and should run: one deleted meanwhile stays deleted.
            headers = {**self._headers(), ADOPT: "1"}
            async with self.http.put(url, json={}, headers=headers) as resp:
                if resp.status in (200, 201):
                    return Outcome.OK, ""
                return Outcome.FAILED, f"{resp.status} {(await resp.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError, ActionFailed) as exc:
            return Outcome.FAILED, str(exc)

    async def _record(self, event: Event) -> None:
        try:
            await self.events.record(event)
        except RedisError as exc:
            log.warning("could not record event %s: %s", event, exc)


def _has_room(fleet: Fleet, shard_id: str) -> bool:
    beat = fleet.beats.get(shard_id)
    return beat is not None and beat.has_room
