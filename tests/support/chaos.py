"""The chaos suite's load, its invariants and its record (tests/chaos).

`Load` keeps the front busy the way a client app would while faults are injected: every
logged-in session sends a message with a unique text every `pace` seconds, and a creator opens
and deletes scratch sessions. Every call is kept, so a fault's cost is counted afterwards. Each
call goes out on a new connection (`load_client`): nginx closes idle kept-alive client
connections on every reload, and a request sent on one at that moment fails before nginx reads
it (docs/nginx.md, "What a reload costs clients"; tests/front/test_nginx_reload.py measures
reloads on new connections). That race is between nginx and the client; counted here, it would
be mixed into what the fleet itself does during a fault.

`audit` checks what must hold after any fault: no session lost (registry record, snapshot, a live
context on its owner), none live on two shards and every live context holding the registry's
fencing token, no shard over capacity, nothing deleted coming back, every accepted send delivered
exactly once and no send delivered twice. `Watch` checks the second and third all along.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatscale_contract.keys import Keys
from support.scenario import API_KEY

KEYS = Keys("cs:")
HEADERS = {"X-Api-Key": API_KEY}
RECIPIENT = "15550009999"
QUIET = 5.0
"""Seconds of calls without a failure after which the fleet counts as serving normally."""

Shards = Callable[[], Awaitable[dict[str, str]]]
"""The live shards: shard id -> the base URL where the test reaches that shard directly."""


@dataclass
class Call:
    at: float
    kind: str
    status: int
    """The HTTP status; 0 when no answer came (refused, reset, timed out)."""
    why: str = ""
    """For a failed call: the answer's body (cut short) and the shard that gave it, or the
    client's error, so a failure in a test's output says what happened."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def label(self) -> str:
        """Kind and status, e.g. "send 503" or "read no answer"."""
        return f"{self.kind} {self.status or 'no answer'}"


def load_client(timeout: float = 30) -> aiohttp.ClientSession:
    """A client session that opens a new connection for every request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


@dataclass
class Load:
    http: aiohttp.ClientSession
    """Made by `load_client()`."""
    front: str
    sessions: list[str]
    pace: float = 0.5
    calls: list[Call] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)
    """Sessions created by the load (its scratch ones and `place`'s) and not deleted since."""
    deleted: set[str] = field(default_factory=set)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _scratch: itertools.count[int] = field(default_factory=itertools.count)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._stopping.clear()
        self._tasks = [asyncio.create_task(self._sender(sid)) for sid in self.sessions]
        self._tasks.append(asyncio.create_task(self._creator()))

    async def stop(self) -> None:
        """Let every call in flight finish (a call cancelled half-way could have done its work
        with nobody knowing), then stop."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def since(self, moment: float) -> list[Call]:
        return [c for c in self.calls if c.at >= moment]

    def last_failure(self, since: float) -> float:
        """When the last call after `since` failed (`since` itself if none did)."""
        return max((c.at for c in self.failed(since, math.inf)), default=since)

    def failed(self, since: float, until: float) -> list[Call]:
        """The calls in [since, until] that failed, in order."""
        return [c for c in self.since(since) if c.at <= until and not c.ok]

    def failures(self, since: float, until: float) -> dict[str, int]:
        """Failed calls in [since, until] by kind and status, e.g. {"send 503": 2}."""
        return dict(collections.Counter(c.label for c in self.failed(since, until)))

    def why(self, since: float, until: float, most: int = 5) -> list[str]:
        """What the first `most` failed calls in [since, until] were answered."""
        return [f"{c.label}: {c.why}" for c in self.failed(since, until)[:most]]

    async def call(self, method: str, path: str, kind: str, body: Any = None) -> int:
        status, why = 0, ""
        try:
            async with self.http.request(
                method, self.front + path, json=body, headers=HEADERS
            ) as resp:
                text = (await resp.read()).decode(errors="replace")
                status = resp.status
                if not 200 <= status < 300:
                    why = f"{text[:200]} (from {resp.headers.get('X-Shard-Id', 'no shard')})"
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        self.calls.append(Call(time.monotonic(), kind, status, why))
        return status

    async def _sender(self, sid: str) -> None:
        while not self._stopping.is_set():
            text = f"chaos {sid} {next(self._numbers)}"
            self.sent.add(text)
            body = {"to": RECIPIENT, "text": text}
            if await self.call("POST", f"/api/sessions/{sid}/messages", "send", body) == 201:
                self.accepted.add(text)
            await self._pause(self.pace)

    async def place(self, sid: str) -> None:
        """Create `sid` as a client would: again after a refusal or no answer, until placed."""
        for _ in itertools.count():
            if await self.call("PUT", f"/api/sessions/{sid}", "create", {}) in (200, 201):
                self.created.add(sid)
                return
            await asyncio.sleep(1)

    async def _creator(self) -> None:
        """Opens a scratch session and deletes it a few seconds later, as a client would: a PUT
        (idempotent) is repeated until it answers; a DELETE too, and a 404 after a DELETE that
        got no answer means that one did the work."""
        sid, unsure = f"chaos-tmp-{next(self._scratch)}", set()
        while not self._stopping.is_set():
            if await self.call("PUT", f"/api/sessions/{sid}", "create", {}) in (200, 201):
                self.created.add(sid)
                sid = f"chaos-tmp-{next(self._scratch)}"
            await self._pause(3)
            for gone in [s for s in self.created if s.startswith("chaos-tmp-")]:
                status = await self.call("DELETE", f"/api/sessions/{gone}", "delete")
                if status == 200 or (status == 404 and gone in unsure):
                    self.created.discard(gone)
                    self.deleted.add(gone)
                elif status == 0:
                    unsure.add(gone)
            await self._pause(2)


async def live_contexts(
    http: aiohttp.ClientSession, shards: dict[str, str]
) -> dict[str, list[tuple[str, int]]]:
    """Session id -> [(shard, fencing token)] of every context the shards have open now."""
    found: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for shard_id, url in shards.items():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with http.get(f"{url}/admin/sessions", headers=HEADERS) as resp:
                for view in (await resp.json())["sessions"]:
                    found[view["id"]].append((shard_id, int(view["token"])))
    return found


@dataclass
class Watch:
    """Samples every shard's open contexts each second, all through the faults. A session open
    on two shards in three samples running is a violation (one sample may catch a hand-over
    half-way); so is a shard with more than `capacity` contexts open in any sample."""

    http: aiohttp.ClientSession
    shards: Shards
    capacity: int
    violations: list[str] = field(default_factory=list)
    samples: int = 0

    async def run(self) -> None:
        streak: collections.Counter[str] = collections.Counter()
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, RedisError, OSError):
                live = await live_contexts(self.http, await self.shards())
                self.samples += 1
                twice = {sid for sid, where in live.items() if len(where) > 1}
                streak = collections.Counter({sid: streak[sid] + 1 for sid in twice})
                self.violations += [f"{s} open on {live[s]}" for s, n in streak.items() if n == 3]
                held = collections.Counter(shard for where in live.values() for shard, _ in where)
                self.violations += [
                    f"{shard} had {n} sessions open (max {self.capacity})"
                    for shard, n in held.items()
                    if n > self.capacity
                ]
            await asyncio.sleep(1)


async def audit(
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    site: str,
    shards: dict[str, str],
    load: Load,
    capacity: int,
) -> list[str]:
    """Every invariant violated now (empty: all hold). Call it with the load stopped."""
    problems: list[str] = []
    live = await live_contexts(http, shards)
    for sid in load.sessions + sorted(load.created):
        record = await redis.hgetall(KEYS.session(sid))
        if not record:
            problems.append(f"{sid}: lost (no registry record)")
            continue
        where = live.get(sid, [])
        owner, token = record.get("owner", ""), int(record.get("token") or 0)
        if where != [(owner, token)]:
            problems.append(f"{sid}: registry says {owner} token {token}, open on {where}")
        if sid in load.sessions and not await redis.exists(KEYS.snapshot(sid)):
            problems.append(f"{sid}: its snapshot is lost")
    for sid, where in live.items():
        if len(where) > 1:
            problems.append(f"{sid}: open on two shards: {where}")
    for shard_id in shards:
        held = await redis.scard(KEYS.shard_sessions(shard_id))
        if held > capacity:
            problems.append(f"{shard_id}: holds {held} sessions (max {capacity})")
    for sid in sorted(load.deleted):
        if await redis.exists(KEYS.session(sid)) or sid in live:
            problems.append(f"{sid}: deleted, but back")
    problems += await deliveries(http, site, load)
    return problems


async def deliveries(http: aiohttp.ClientSession, site: str, load: Load) -> list[str]:
    async with http.get(f"{site}/api/state") as resp:
        messages = (await resp.json())["messages"]
    counts = collections.Counter(m["text"] for m in messages if m["text"] in load.sent)
    problems = [f"sent twice: {text!r}" for text, n in counts.items() if n > 1]
    problems += [f"accepted, never delivered: {text!r}" for text in load.accepted - set(counts)]
    return problems


@dataclass
class Outcome:
    """One fault's line in the reliability table."""

    fault: str
    recovered_s: float
    """From the fault until every session answered WORKING through the front again and the
    last call failed, whichever came later."""
    failed: dict[str, int]
    """Calls that failed (no answer, or not 2xx) from the fault on, by kind and status."""
    requests: int
    """Calls made from the fault until the audit."""
    sends_accepted: int
    """Sends answered 201 in that time (the audit checks each was delivered exactly once)."""
    problems: list[str]
    notes: list[str] = field(default_factory=list)
    """What the test saw happen (e.g. which process the kernel killed)."""


async def until_serving(
    http: aiohttp.ClientSession, front: str, sessions: list[str], timeout: float
) -> None:
    """Until every session answers WORKING through the front."""
    began = time.monotonic()

    async def working(sid: str) -> bool:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with http.get(f"{front}/api/sessions/{sid}", headers=HEADERS) as resp:
                return resp.status == 200 and (await resp.json())["status"] == "WORKING"
        return False

    while not all([await working(sid) for sid in sessions]):
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"the fleet did not serve every session within {timeout:g} s")
        await asyncio.sleep(0.25)


@dataclass
class Chaos:
    """Runs faults one after another under the load and keeps one Outcome per fault."""

    http: aiohttp.ClientSession
    front: str
    redis: aioredis.Redis
    site: str
    shards: Shards
    orphans: Callable[[], Awaitable[list[str]]]
    """Shard processes or containers the fleet does not know of (must come to none)."""
    capacity: int
    load: Load
    outcomes: list[Outcome] = field(default_factory=list)
    watch: Watch = field(init=False)

    def __post_init__(self) -> None:
        self.watch = Watch(self.http, self.shards, self.capacity)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """The Watch runs all through the block."""
        task = asyncio.create_task(self.watch.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def fault(
        self, name: str, inject: Callable[[], Awaitable[None]], timeout: float = 180
    ) -> Outcome:
        """Load for a few seconds, inject, wait until the fleet serves normally again (every
        session WORKING through the front, then QUIET seconds without a failed call), then stop
        the load and audit."""
        self.load.start()
        await asyncio.sleep(3)
        began, accepted = time.monotonic(), len(self.load.accepted)
        try:
            await inject()
            await until_serving(self.http, self.front, self.load.sessions, timeout)
            serving = time.monotonic()
            calm = await self._calm(began, began + timeout)
        finally:
            await self.load.stop()
        failures = self.load.failures(began, time.monotonic())
        problems = [] if calm else [f"calls still failing after {timeout:g} s"]
        problems += await self._settled()
        problems += await audit(
            self.http, self.redis, self.site, await self.shards(), self.load, self.capacity
        )
        recovered = round(max(serving, self.load.last_failure(began)) - began, 1)
        sent = len(self.load.accepted) - accepted
        outcome = Outcome(name, recovered, failures, len(self.load.since(began)), sent, problems)
        outcome.notes += self.load.why(began, time.monotonic())
        self.outcomes.append(outcome)
        print(f"chaos: {outcome}")
        return outcome

    async def _calm(self, began: float, deadline: float) -> bool:
        """Until QUIET seconds passed with calls made and none failed; False at `deadline`."""
        while time.monotonic() < deadline:
            last = self.load.last_failure(began)
            quiet = [c for c in self.load.since(last) if c.ok]
            if time.monotonic() - last >= QUIET and len(quiet) >= 3:
                return True
            await asyncio.sleep(0.5)
        return False

    async def _settled(self, timeout: float = 60) -> list[str]:
        """Orphans may take a reconcile pass or two to go; those still there after `timeout`."""
        deadline = time.monotonic() + timeout
        for _ in itertools.count():
            left = await self.orphans()
            if not left or time.monotonic() > deadline:
                return [f"orphan: {what}" for what in left]
            await asyncio.sleep(1)
        raise AssertionError("unreachable")


async def beating_shards(redis: aioredis.Redis, resolve: Callable[[str], str]) -> dict[str, str]:
    """Every shard with a heartbeat -> its base URL (`resolve` turns its host:port into one)."""
    found = {}
    for shard_id in await redis.zrange(KEYS.shards, 0, -1):
        addr = await redis.hget(KEYS.shard(shard_id), "addr")
        if addr:
            found[shard_id] = resolve(addr)
    return found


def record(path: Any, mode: str, outcomes: list[Outcome]) -> None:
    """Keep the outcomes (test-artifacts/chaos-<mode>.json) and print the table's rows."""
    rows = [
        {
            "fault": o.fault,
            "recovered_s": o.recovered_s,
            "failed": o.failed,
            "requests": o.requests,
            "sends_accepted": o.sends_accepted,
            "problems": o.problems,
            "notes": o.notes,
        }
        for o in outcomes
    ]
    data = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    (path / f"chaos-{mode}.json").write_text(json.dumps(data, indent=2))
    print(f"\n== chaos ({mode}) ==\n{json.dumps(data, indent=2)}")
