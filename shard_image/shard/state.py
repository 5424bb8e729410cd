"""One shard: its parts wired together, its heartbeat (the lease), and draining.

The heartbeat is also the lease on the shard's sessions: if it cannot be renewed for nearly a
whole timeout, the shard closes every session itself before another shard may claim them, so a
partitioned shard never keeps serving a session someone else restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from chatscale_contract.auth import Keyring
from chatscale_contract.beat import Beat, ReportedState
from shard.access import load_keyring
from shard.browser import BrowserHost
from shard.memory import MemoryUse, measure
from shard.metrics import ShardMetrics
from shard.registry import Registry
from shard.routing import Router
from shard.sessions import SessionManager, Status
from shard.settings import ShardSettings

log = logging.getLogger(__name__)
MIGRATION_ATTEMPTS = 3
MEMORY_SAMPLE_SECONDS = 5.0
"""Without a cgroup limit, memory is the PSS of ~2.5 processes per session: reading it for 50
sessions takes a few hundred ms, too much to repeat every heartbeat."""


class Shard:
    def __init__(
        self,
        settings: ShardSettings,
        registry: Registry,
        browser: BrowserHost,
        http: aiohttp.ClientSession,
    ):
        self.settings = settings
        self.registry = registry
        self.browser = browser
        self.metrics = ShardMetrics()
        self.manager = SessionManager(settings, registry, browser, self.metrics)
        self.router = Router(settings, registry, http)
        self.started_at = time.time()
        self.boot = f"{int(self.started_at * 1000):x}"
        self.memory = MemoryUse(0, 0, "unknown")
        self.baseline_bytes = 0
        """Memory once the browser was up, before any session (0 until measured): what the
        autoscaler's max_growth_per_session measures growth from."""
        self.fenced = False
        self.keyring = Keyring(None, {}, settings.api_key)
        """Refreshed after every heartbeat (access.py); until the first, only API_KEY counts."""
        """True while the lease is lost and every session has been closed."""
        self.restored = False
        """True once the sessions Redis says are ours have been reopened."""
        self._drain_stopping = False
        self._last_beat = time.monotonic()
        self._drain: asyncio.Task[None] | None = None
        self._reported_full = False
        self._measured_at = -MEMORY_SAMPLE_SECONDS

    # --- state ------------------------------------------------------------------------------

    @property
    def memory_full(self) -> bool:
        limit = self.memory.limit_bytes
        return limit > 0 and self.memory.used_bytes >= self.settings.memory_high_watermark * limit

    @property
    def state(self) -> ReportedState:
        if self.manager.draining_since is not None:
            return ReportedState.DRAINING
        if len(self.manager.sessions) >= self.settings.max_sessions or self.memory_full:
            return ReportedState.FULL
        return ReportedState.ACCEPTING

    def has_room(self) -> bool:
        return self.state == ReportedState.ACCEPTING and not self.fenced

    # --- heartbeat and lease ----------------------------------------------------------------

    async def heartbeat_forever(self) -> None:
        while True:
            await self.beat_once()
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def beat_once(self) -> None:
        """One heartbeat, then the lease check, whatever the heartbeat's outcome."""
        sent = time.monotonic()
        try:
            if sent - self._measured_at >= MEMORY_SAMPLE_SECONDS:
                self.memory = await asyncio.to_thread(measure)
                self._measured_at = time.monotonic()
                self._take_baseline()
            # Bounded: a Redis that stops answering must not stall the lease check below.
            beat = self.registry.beat(self._beat(), ttl=self.settings.heartbeat_timeout)
            await asyncio.wait_for(beat, self.settings.heartbeat_interval)
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.heartbeat_failures.inc()
            log.warning("heartbeat failed: %s", exc or type(exc).__name__)
        else:
            self._last_beat = sent  # the lease runs from when the renewal was sent
            await self._after_beat()
        await self._check_lease()

    def _take_baseline(self) -> None:
        # Taken once, from the first sample: app.py starts the browser before the first beat and
        # sessions are restored only after it, so that sample is the browser alone. The other
        # choice, the lowest figure seen while empty, only ever moves down: one dip (the browser
        # relaunching after a crash, no renderer yet) would stick and make all later memory look
        # like growth, and a shard that empties after a leak never dips below its first figure.
        if not self.baseline_bytes and not self.manager.sessions:
            self.baseline_bytes = self.memory.used_bytes

    async def _after_beat(self) -> None:
        try:
            self.keyring = await load_keyring(
                self.registry.redis, self.registry.keys, self.settings.api_key
            )
            self.router.credential = self.keyring.credential
            if not self.restored:
                # At start, and after the lease was lost: reopen what is still ours. Retried
                # on every heartbeat until it succeeds.
                await self.manager.restore_owned()
                self.restored, self.fenced = True, False
            await self.manager.check_ownership()
            full = self.state == ReportedState.FULL
            if full and not self._reported_full:
                await self.registry.nudge()
            self._reported_full = full
        except RedisError as exc:
            log.warning("post-heartbeat checks failed: %s", exc)

    async def _check_lease(self) -> None:
        """Close every session before the lease can expire (one interval of margin)."""
        silent = time.monotonic() - self._last_beat
        limit = self.settings.heartbeat_timeout - self.settings.heartbeat_interval
        if silent >= limit and not self.fenced:
            log.error("no heartbeat for %.0f s: lease may lapse; closing all sessions", silent)
            self.fenced, self.restored = True, False
            await self.manager.close_all()

    def _beat(self) -> Beat:
        return Beat(
            id=self.settings.shard_id,
            addr=self.settings.public_addr,
            state=self.state,
            sessions=len(self.manager.sessions),
            capacity=self.settings.max_sessions,
            memory_bytes=self.memory.used_bytes,
            memory_limit_bytes=self.memory.limit_bytes,
            ts=time.time(),
            boot=self.boot,
            version=self.settings.version,
            started_at=self.started_at,
            draining_since=self.manager.draining_since,
            baseline_bytes=self.baseline_bytes,
        )

    def refresh_gauges(self) -> None:
        counts = dict.fromkeys(Status, 0)
        for session in self.manager.sessions.values():
            counts[session.status] += 1
        for status, count in counts.items():
            self.metrics.sessions.labels(status=status.value).set(count)
        self.metrics.capacity.set(self.settings.max_sessions)
        self.metrics.memory.set(self.memory.used_bytes)
        self.metrics.memory_limit.set(self.memory.limit_bytes)

    # --- draining ---------------------------------------------------------------------------

    def start_drain(self) -> None:
        """Stop taking sessions and move the ones here to other shards (in the background)."""
        if self._drain is None or self._drain.done():
            self.manager.draining_since = self.manager.draining_since or time.time()
            self._drain = asyncio.create_task(self.drain(), name="drain")

    async def cancel_drain(self) -> None:
        """Stop draining after the hand-off in progress (never halfway through one)."""
        if self._drain is not None:
            self._drain_stopping = True
            with contextlib.suppress(Exception):
                await self._drain
            self._drain_stopping = False
        self.manager.draining_since = None
        await self.beat_once()

    async def drain(self) -> None:
        await self.beat_once()  # tell everyone at once that no new sessions should come here
        for sid in sorted(self.manager.sessions):
            if self._drain_stopping:
                break
            try:
                moved = await self.manager.hand_off(sid, self.migrate)
            except Exception as exc:  # one session failing must not stop the drain
                log.warning("drain: %s could not be handed off: %s", sid, exc)
                continue
            log.info("drain: %s %s", sid, "moved" if moved else "released (orphan)")
        await self.beat_once()

    async def migrate(self, sid: str) -> bool:
        """Ask the best other shard with room to adopt `sid`; try a few before giving up."""
        tried: set[str] = set()
        for _ in range(MIGRATION_ATTEMPTS):
            target = await self.router.place(sid, False, exclude={self.settings.shard_id, *tried})
            if target is None:
                return False
            if await self.router.adopt(sid, target):
                return True
            tried.add(target)
        return False

    async def shutdown(self, grace: float) -> None:
        """SIGTERM: hand every session off within `grace` seconds, then release what is left."""
        self.start_drain()
        assert self._drain is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._drain), grace)
        except TimeoutError:
            log.warning("drain did not finish in %.0f s; releasing the rest", grace)
            self._drain.cancel()
        with contextlib.suppress(RedisError, OSError):
            await self.manager.release_all()
        with contextlib.suppress(RedisError, OSError):
            await self.registry.withdraw()


SHARD: web.AppKey[Shard] = web.AppKey("shard", Shard)
