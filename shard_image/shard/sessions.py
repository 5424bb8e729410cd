"""Sessions living in this shard: open, watch, snapshot, stop, hand off, restore.

Each live session holds the fencing token it claimed with; every write to Redis carries it, and a
refused write means another shard took the session over, so this copy closes at once. That, plus
the lease check in `state.py`, is what keeps a session live on at most one shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from playwright.async_api import BrowserContext, Page
from playwright.async_api import Error as PlaywrightError
from redis.exceptions import RedisError

from shard.browser import BrowserHost
from shard.drivers import DEFAULT_DRIVER, Driver, DriverError, PageState, make_driver
from shard.egress import Policy, Refused
from shard.messages import BadReport, Inbox, parse
from shard.metrics import ShardMetrics
from shard.registry import Registry
from shard.restore import split
from shard.settings import ShardSettings

log = logging.getLogger(__name__)
WATCH_INTERVAL = 1.0
MESSAGE_RETRIES = 8
"""Attempts to record what a page reported while Redis is away (about a minute in all)."""
PROBE_FAILURES = 30
"""Consecutive failed page probes (one per WATCH_INTERVAL) after which the session FAILS: a
navigation takes a few, an invalid selector fails every one."""
OPEN_RETRY_DELAYS = (2.0, 10.0, 30.0)
"""Seconds before each new try to open a session whose open failed (a page that did not load
within the navigation timeout on a busy machine, the site unreachable for a moment): without
them a failover's restore on a loaded machine ended FAILED and nobody tried again. The session
stays STARTING, its `error` saying why, and is FAILED after the last."""
RESTORED_SNAPSHOT_DELAY = (30.0, 60.0)
"""Seconds (spread at random) after which a session opened from its snapshot is snapshotted
again, when SNAPSHOT_INTERVAL is not shorter."""


class Status(StrEnum):
    STARTING = "STARTING"
    SCAN_QR_CODE = "SCAN_QR_CODE"
    WORKING = "WORKING"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


_STATUS_OF = {PageState.QR: Status.SCAN_QR_CODE, PageState.READY: Status.WORKING}


class Draining(Exception):
    """This shard is draining and takes no new sessions."""


class NotHere(Exception):
    """The session is not live on this shard."""


@dataclass(frozen=True)
class SessionSpec:
    """What a caller asked for; stored in the registry so any shard can reopen the session."""

    driver: str = DEFAULT_DRIVER
    options: dict[str, Any] = field(default_factory=dict)
    workspace_id: str = ""
    account_id: str = ""
    webhooks: str = ""
    """The session's own webhook receivers, as stored (chatscale_contract.webhooks.hooks_text);
    every event of the session carries them."""
    name: str = ""
    """The name a WAHA client gave the session (shard/waha/names.py), when it is not the id;
    events name the session by it."""
    metadata: dict[str, str] = field(default_factory=dict)
    """WAHA's `config.metadata`: copied into every event of the session."""

    def fields(self) -> dict[str, str]:
        return {
            "driver": self.driver,
            "options": json.dumps(self.options, sort_keys=True),
            "workspace_id": self.workspace_id,
            "account_id": self.account_id,
            "webhooks": self.webhooks,
            "name": self.name,
            "metadata": json.dumps(self.metadata, sort_keys=True) if self.metadata else "",
        }

    @classmethod
    def from_record(cls, record: dict[str, str]) -> SessionSpec:
        return cls(
            driver=record.get("driver") or DEFAULT_DRIVER,
            options=_object(record.get("options", "")),
            workspace_id=record.get("workspace_id", ""),
            account_id=record.get("account_id", ""),
            webhooks=record.get("webhooks", ""),
            name=record.get("name", ""),
            metadata=_object(record.get("metadata", "")),
        )


def _object(text: str) -> dict[str, Any]:
    """A JSON object from a record; {} for a damaged one (logged), so the session still opens."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("a session record holds %r where a JSON object belongs; using {}", text[:80])
        return {}
    return value


@dataclass
class LiveSession:
    id: str
    token: int
    spec: SessionSpec
    driver: Driver
    status: Status = Status.STARTING
    error: str = ""
    context: BrowserContext | None = None
    page: Page | None = None
    watcher: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    snapshot_at: float = 0.0
    started_at: float = field(default_factory=time.time)
    me: str = ""
    """The logged-in account's phone number, once WORKING (when the driver can tell)."""
    restored: bool = False
    """Being opened from a snapshot (or, until its snapshot is read, moved here or reopened):
    it was logged in, so STARTING means "back in a moment" and requests for it are held."""


class SessionManager:
    """The sessions of this shard. Owns their browser contexts; talks to Redis via Registry."""

    def __init__(
        self,
        settings: ShardSettings,
        registry: Registry,
        browser: BrowserHost,
        metrics: ShardMetrics,
    ):
        self.settings = settings
        self.registry = registry
        self.browser = browser
        self.metrics = metrics
        self.inbox = Inbox(registry.redis, registry.keys)
        self.egress = Policy.of(settings.egress_allow, settings.whatsapp_url)
        self.sessions: dict[str, LiveSession] = {}
        self.draining_since: float | None = None
        self._opening = asyncio.Semaphore(settings.restore_concurrency)
        self._starting: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        """Per-id start locks; an entry lives only while someone holds or waits for it."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Fire-and-forget tasks (reopens), kept referenced until they finish."""

    # --- creating and restoring -------------------------------------------------------------

    def build(self, spec: SessionSpec) -> Driver:
        """Validate a spec by building its driver; raises DriverError before anything is claimed
        (also for a site the egress guard would not let the browser reach)."""
        driver = make_driver(
            spec.driver,
            spec.options,
            self.settings.whatsapp_url,
            self.settings.whatsapp_selectors,
        )
        if self.settings.egress_guard:
            try:
                self.egress.check_url(driver.url)
            except Refused as exc:
                raise DriverError(str(exc)) from None
        return driver

    async def start(
        self, sid: str, spec: SessionSpec | None, *, reclaim: bool = False, adopt: bool = False
    ) -> tuple[LiveSession, bool]:
        """Claim `sid` for this shard and open it (restoring its snapshot if one exists).

        Returns the session and whether this call started it (False: it was running already).
        Raises Draining, registry.Full, registry.OwnedElsewhere, registry.Gone (`adopt`: it was
        deleted or stopped meanwhile) or DriverError.
        """
        # One start per id at a time: two concurrent creates (a client retry, a forwarded
        # request) must not open two browser contexts for one session.
        lock = self._starting.setdefault(sid, asyncio.Lock())
        async with lock:
            if sid in self.sessions:
                return self.sessions[sid], False
            if self.draining_since is not None:
                raise Draining()
            token = await self.registry.claim(sid, reclaim=reclaim, adopt=adopt)
            if spec is None:
                spec = SessionSpec.from_record(await self.registry.record(sid))
            session = LiveSession(sid, token, spec, self.build(spec))
            # Moved here or back after a restart: "back in a moment" from now on, also while it
            # waits its turn to open (RESTORE_CONCURRENCY); `_open` says if a snapshot exists.
            session.restored = adopt or reclaim
            self.sessions[sid] = session
        fields = {**spec.fields(), "status": Status.STARTING, "desired": "running", "error": ""}
        await self.registry.update(sid, token, fields)
        session.watcher = asyncio.create_task(self._run(session), name=f"session {sid}")
        self.metrics.created.inc()
        return session, True

    async def restore_owned(self) -> int:
        """Reopen every session Redis says this shard owns (after a restart under the same id)."""
        owned = sorted(await self.registry.owned())
        started = 0
        for sid in owned:
            if sid in self.sessions:
                continue
            try:
                started += await self._restore_one(sid)
            except RedisError:
                raise  # the caller retries the whole restore once Redis answers
            except Exception as exc:  # one bad session must not stop the others coming back
                log.warning("could not restore %s: %s", sid, exc)
        if owned:
            log.info("restoring %d of %d owned session(s)", started, len(owned))
        return started

    async def _restore_one(self, sid: str) -> int:
        record = await self.registry.record(sid)
        if record.get("desired", "running") != "running" or self.draining_since is not None:
            # Not to be run here: give it up, so it neither blocks a slot nor hides from the
            # autoscaler (a session that should run becomes an orphan to place elsewhere).
            running = record.get("desired", "running") == "running"
            token = int(record.get("token", 0))
            await self.registry.release(sid, token, keep_running=running)
            return 0
        await self.start(sid, None, reclaim=True)
        return 1

    async def _run(self, session: LiveSession) -> None:
        """Open the session's browser context, then watch its page until it closes."""
        try:
            if await self._open_retrying(session):
                await self._watch(session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("session %s failed: %s", session.id, exc)
            try:
                await self._set_status(session, Status.FAILED, str(exc))
            except RedisError:  # Redis away: this copy at least says so (nothing retries it)
                session.status, session.error = Status.FAILED, str(exc)

    async def _open_retrying(self, session: LiveSession) -> bool:
        """Open the session, again after OPEN_RETRY_DELAYS if it fails; False if it was lost
        meanwhile. The last failure is raised."""
        for attempt, delay in enumerate(OPEN_RETRY_DELAYS, start=1):
            try:
                async with self._opening:
                    await self._open(session)
                return True
            except (DriverError, PlaywrightError, RedisError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("session %s: open failed (try %d): %s", session.id, attempt, why)
                await self._discard_context(session)
                self.metrics.open_retries.inc()
                error = f"open failed ({why}); trying again in {delay:g} s"
                with contextlib.suppress(RedisError):  # only telling; the retry matters
                    if not await self._set_status(session, Status.STARTING, error):
                        return False
                await asyncio.sleep(delay)
        async with self._opening:
            await self._open(session)
        return True

    async def _open(self, session: LiveSession) -> None:
        state = await self._load_snapshot(session.id)
        opened = time.monotonic()
        # Off the event loop: a heavy page's snapshot is megabytes of JSON to encode again.
        restore = await asyncio.to_thread(split, state, session.driver.url)
        session.restored = state is not None
        if session.restored:
            # What it opens from is saved already, so it need not be snapshotted before it is
            # WORKING: on a heavy page that snapshot took most of a restore's extra time. The
            # site's changes on load are saved a little later, spread so that a failover's
            # sessions do not all snapshot at once.
            delay = min(self.settings.snapshot_interval, random.uniform(*RESTORED_SNAPSHOT_DELAY))
            session.snapshot_at = time.time() - self.settings.snapshot_interval + delay
        session.context = await self.browser.new_context(restore.context_state)
        session.page = await session.context.new_page()
        session.page.on("crash", lambda _page: self._reopen_later(session, "page crashed"))
        await session.driver.watch(session.page, functools.partial(self._on_messages, session))
        if restore.page_script is None:
            await session.driver.open(session.page)
        else:
            # Applied by the first document only: later loads must see the site's own changes.
            async with self.browser.init_script(session.page, restore.page_script):
                await session.driver.open(session.page)
        self.metrics.open_seconds.observe(time.monotonic() - opened)
        if state is not None:
            self.metrics.restored.inc()

    async def _load_snapshot(self, sid: str) -> dict[str, Any] | None:
        try:
            blob = await self.registry.snapshot(sid)
            if blob is None:
                return None
            return await asyncio.to_thread(decode_snapshot, blob)
        except (zlib.error, ValueError) as exc:
            log.warning("snapshot of %s unreadable, starting fresh: %s", sid, exc)
            return None

    async def _watch(self, session: LiveSession) -> None:
        failures = 0
        while session.page is not None and not session.page.is_closed():
            try:
                page_state = await session.driver.state(session.page)
                failures = 0
            except Exception as exc:  # navigation in progress; try again next tick
                failures += 1
                log.debug("state probe of %s failed: %s", session.id, exc)
                if failures >= PROBE_FAILURES:  # not navigation: e.g. an invalid selector
                    raise DriverError(f"the page cannot be read: {exc}") from exc
                page_state = PageState.LOADING
            try:
                if not await self._step(session, _STATUS_OF.get(page_state, session.status)):
                    return
            except RedisError as exc:  # Redis away for a moment: the next tick tries again
                log.warning("session %s: registry unreachable: %s", session.id, exc)
            await asyncio.sleep(WATCH_INTERVAL)

    async def _step(self, session: LiveSession, status: Status) -> bool:
        """Act on the page's state; False once the session is no longer ours."""
        # A login is snapshotted before it is reported WORKING: whoever sees WORKING can rely
        # on the session surviving a crash without a new scan.
        if status == Status.WORKING and self._snapshot_due(session):
            try:
                if not await self.snapshot(session):
                    return False
            except RedisError:
                raise
            except Exception as exc:  # the page was busy; the next tick tries again
                log.info("snapshot of %s failed, retrying: %s", session.id, exc)
                return True
        if status != session.status:
            return await self._set_status(session, status)
        return True

    async def _on_messages(self, session: LiveSession, report: object) -> None:
        """What the page's observer saw: events for messages never announced (messages.py)."""
        if self.sessions.get(session.id) is not session:
            return  # a closed or replaced copy: the live one reports for itself
        try:
            batch = parse(report)
        except BadReport as exc:
            log.warning("session %s: page report dropped: %s", session.id, exc)
            return
        for attempt in range(MESSAGE_RETRIES):
            try:
                self.metrics.message_events.inc(
                    await self.inbox.record(session.id, batch, session.me)
                )
                return
            except RedisError as exc:  # held here for a moment; a reload would report it again
                log.warning("session %s: messages not recorded yet: %s", session.id, exc)
                await asyncio.sleep(min(2**attempt, 10))

    def _snapshot_due(self, session: LiveSession) -> bool:
        return time.time() - session.snapshot_at >= self.settings.snapshot_interval

    async def _set_status(self, session: LiveSession, status: Status, error: str = "") -> bool:
        """Record a status change; False (and the local copy closed) if the session was lost.

        The copy in memory, which the API shows, changes only once Redis has the change and
        its webhook event (one atomic write): a client that saw WORKING and then killed the
        shard found no WORKING event when the page was slow to answer `me` (a busy machine)."""
        fields = {"status": status.value, "error": error}
        if status == Status.WORKING and session.page is not None:
            with contextlib.suppress(Exception):  # only a nicety: WAHA's `me`
                session.me = await session.driver.me(session.page) or ""
            fields["me"] = session.me
        if await self.registry.update(session.id, session.token, fields):
            session.status, session.error = status, error
            return True
        await self.lost(session)
        return False

    def _reopen_later(self, session: LiveSession, why: str) -> None:
        log.warning("session %s: %s; reopening from its snapshot", session.id, why)
        task = asyncio.get_running_loop().create_task(self.reopen(session.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reopen(self, sid: str) -> None:
        """Close and reopen one session's context in place (same token), e.g. after a crash."""
        session = self.sessions.get(sid)
        if session is None:
            return
        async with session.lock:
            if self.sessions.get(sid) is not session:
                return  # stopped, handed off or lost while we waited: nothing to reopen
            await self._close(session)
            session.restored = session.restored or session.status == Status.WORKING
            session.status = Status.STARTING
            session.watcher = asyncio.create_task(self._run(session), name=f"session {sid}")

    async def reopen_all(self) -> None:
        """After the browser itself died: every session comes back from its snapshot."""
        await asyncio.gather(*(self.reopen(sid) for sid in list(self.sessions)))

    # --- using a session --------------------------------------------------------------------

    def get(self, sid: str) -> LiveSession:
        session = self.sessions.get(sid)
        if session is None:
            raise NotHere(sid)
        return session

    async def snapshot(self, session: LiveSession) -> bool:
        """Save cookies, localStorage and IndexedDB to Redis (fenced). False if not saved."""
        if session.context is None:
            return False
        started = time.monotonic()
        state = await session.context.storage_state(indexed_db=True)
        # A heavy page's state is megabytes: encoded on the loop, it would delay everything
        # else the shard does, its heartbeat included.
        blob = await asyncio.to_thread(encode_snapshot, state)
        saved = await self.registry.save_snapshot(session.id, session.token, blob)
        if not saved:
            await self.lost(session)
            return False
        session.snapshot_at = time.time()
        self.metrics.snapshot_seconds.observe(time.monotonic() - started)
        self.metrics.snapshot_bytes.observe(len(blob))
        return True

    async def qr(self, sid: str, image: bool = True) -> tuple[str, bytes]:
        session = self.get(sid)
        if session.page is None or session.status != Status.SCAN_QR_CODE:
            raise DriverError(f"no QR code: session is {session.status}")
        return await session.driver.qr(session.page, image)

    async def screenshot(self, sid: str) -> bytes:
        session = self.get(sid)
        if session.page is None:
            raise DriverError(f"no page: session is {session.status}")
        return await session.page.screenshot(type="png")

    async def send_text(self, sid: str, to: str, text: str) -> str:
        session = self.get(sid)
        if session.status != Status.WORKING:
            raise DriverError(f"session is {session.status}, not WORKING")
        async with session.lock:  # (a hand-off holds it while it snapshots and closes the page)
            self._still_here(session)
            if session.page is None:
                raise NotHere(sid)  # reopened while this send waited
            message_id = await session.driver.send_text(session.page, to, text)
        self.metrics.messages.inc()
        return message_id

    # --- ending a session here --------------------------------------------------------------

    async def stop(self, sid: str) -> LiveSession:
        """Stop and release: snapshot, close the context, keep the registry record."""
        session = self.get(sid)
        async with session.lock:
            self._still_here(session)
            if session.status == Status.WORKING:
                await self.snapshot(session)
            await self._close(session)
            session.status = Status.STOPPED
            await self.registry.update(sid, session.token, {"status": Status.STOPPED})
            await self.registry.release(sid, session.token, keep_running=False)
        self._forget_local(session)
        return session

    async def delete(self, sid: str) -> None:
        """Log out at the site (best effort), close, and forget the session and its snapshot."""
        session = self.get(sid)
        async with session.lock:
            self._still_here(session)
            if session.page is not None and session.status == Status.WORKING:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(session.driver.logout(session.page), 15)
            await self._close(session)
            await self.registry.forget(sid, session.token)
        self._forget_local(session)

    def _still_here(self, session: LiveSession) -> None:
        """With `session.lock` held: raise NotHere if the session was handed off (or lost)
        while the caller waited for the lock. Its release is fenced by the token, so a stop or
        delete going on here would change nothing in Redis while the new owner opens it."""
        if self.sessions.get(session.id) is not session:
            raise NotHere(session.id)

    async def hand_off(self, sid: str, migrate: Callable[[str], Awaitable[bool]]) -> bool:
        """Snapshot, close and release a session so another shard can restore it (drain)."""
        session = self.sessions.get(sid)
        if session is None:
            return True
        try:
            async with session.lock:
                if session.status == Status.WORKING:
                    await self.snapshot(session)
                await self._close(session)
                released = await self.registry.release(sid, session.token, keep_running=True)
        finally:
            self._forget_local(session)
        return released and await migrate(sid)

    async def lost(self, session: LiveSession) -> None:
        """Another shard owns this session now: close this copy without touching Redis."""
        log.warning(
            "session %s: ownership lost (token %d); closing local copy", session.id, session.token
        )
        self._forget_local(session)
        self.metrics.lost.inc()
        await self._close(session)

    def _forget_local(self, session: LiveSession) -> None:
        """Drop `session` from the local table, unless a newer copy has taken its place."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    async def check_ownership(self) -> None:
        """Close every local session whose owner or token in Redis is no longer ours."""
        if not self.sessions:
            return
        rows = await self.registry.tokens(list(self.sessions))
        for sid, (owner, token) in rows.items():
            session = self.sessions.get(sid)
            if session is not None and (owner, token) != (self.settings.shard_id, session.token):
                await self.lost(session)

    async def release_all(self) -> None:
        """Shutdown ran out of time: release what is left (its last snapshot will be used)."""
        for sid, session in list(self.sessions.items()):
            await self._close(session)
            await self.registry.release(sid, session.token, keep_running=True)
            self._forget_local(session)

    async def close_all(self) -> None:
        """Close every context without touching Redis (lease lost, or final shutdown)."""
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(self._close(s) for s in sessions), return_exceptions=True)

    async def _close(self, session: LiveSession) -> None:
        watcher, session.watcher = session.watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        await self._discard_context(session)

    @staticmethod
    async def _discard_context(session: LiveSession) -> None:
        context, session.context, session.page = session.context, None, None
        if context is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(context.close(), 10)


def encode_snapshot(state: Mapping[str, object]) -> bytes:
    """Playwright's storage_state as stored in Redis: compact JSON, zlib level 6."""
    return zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 6)


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(zlib.decompress(blob))
    return state
