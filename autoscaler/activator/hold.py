"""Holding a request until a shard can take it, then passing it there.

`Activator.hold` is the whole life of one held request: record the demand (so the autoscaler
starts a shard now rather than at its next pass), wait for a reading of the fleet in which some
shard can take it (`choose`), pass it on, and when that shard answers 503 (it filled up in the
meantime) wait for the next chance. It gives up after `hold_timeout` with a 503 and Retry-After;
the demand stays recorded, so the fleet grows anyway. Requests for one session are held in
line: each waits until the one before it was answered, so their order is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from autoscaler.activator.choose import Reading, choose
from autoscaler.activator.watch import FleetWatch
from autoscaler.metrics import Metrics, quantile
from chatscale_contract.beat import Beat
from chatscale_contract.clock import Clock
from chatscale_contract.config import ActivatorSettings

log = logging.getLogger(__name__)
RETRY_AFTER = 5
DEMAND_RENEWAL = 20.0
"""Seconds between two renewals of a held request's demand mark (it counts for a minute)."""


@dataclass(frozen=True)
class Held:
    """A request as the activator holds it: enough to pass it on unchanged."""

    method: str
    path: str
    """Path and query string, exactly as received."""
    headers: Mapping[str, str]
    body: bytes
    sid: str
    """The session id it is routed by ("" if none)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, message: str) -> Answer:
        body = json.dumps({"error": message, "status": status}).encode()
        headers = {"Content-Type": "application/json", "Retry-After": str(RETRY_AFTER)}
        return cls(status, body, headers)


class Unreachable(Exception):
    """The shard could not be reached before the request was sent: safe to try elsewhere."""


Pass = Callable[[Beat, Held], Awaitable[Answer]]
"""Sends a held request to a shard and returns its answer; raises Unreachable."""
Record = Callable[[str], Awaitable[None]]
"""Records the demand of a held request (its session id, or "" for none) and nudges."""


class Activator:
    def __init__(
        self,
        settings: ActivatorSettings,
        watch: FleetWatch,
        send: Pass,
        record: Record,
        metrics: Metrics,
        clock: Clock,
    ):
        self.settings = settings
        self.watch = watch
        self.send = send
        self.record = record
        self.metrics = metrics
        self.clock = clock
        self.held = 0
        self.counts = {"passed": 0, "timeout": 0, "overflow": 0, "failed": 0, "wakeups": 0}
        self.recent: deque[float] = deque(maxlen=500)
        """Hold times of the latest passed requests, for the status page."""
        self._lines: dict[str, tuple[asyncio.Lock, int]] = {}
        self._waking = False

    async def hold(self, request: Held) -> Answer:
        """Hold `request` until a shard can take it; its answer, or a 503 saying why not."""
        began = self.clock.monotonic()
        await self._record(request.sid)
        if self.held >= self.settings.max_held:
            return self._done("overflow", began, Answer.error(503, self._overflow_message()))
        self.held += 1
        self.metrics.activator_held.set(self.held)
        try:
            with self._line(request.sid) as line:
                async with line:
                    return await self._until_passed(request, began)
        finally:
            self.held -= 1
            self.metrics.activator_held.set(self.held)

    async def _until_passed(self, request: Held, began: float) -> Answer:
        deadline = began + self.settings.hold_timeout
        renew_at = began + DEMAND_RENEWAL
        refused: dict[str, float] = {}
        reading = await self._first_reading()
        while True:
            target = choose(reading, request.sid, await self.watch.owner(request.sid), refused)
            if target is not None:
                try:
                    answer = await self.send(target, request)
                except Unreachable:
                    # Tried again at the next reading: a shard beats for the first time a
                    # moment before it listens, and one that died stops beating soon.
                    pass
                else:
                    if answer.status != 503:
                        return self._done("passed", began, answer)
                    refused[target.id] = target.ts  # full (or moving) since it last beat
            now = self.clock.monotonic()
            if now >= deadline:
                message = (
                    f"no shard could take this request within {self.settings.hold_timeout:g} s;"
                    " more are starting, retry"
                )
                return self._done("timeout", began, Answer.error(503, message))
            if now >= renew_at:
                await self._record(request.sid)
                renew_at = now + DEMAND_RENEWAL
            reading = await self.watch.newer(reading, deadline - now)

    async def _first_reading(self) -> Reading:
        reading = await self.watch.read()
        if reading.empty and not self._waking:
            self._waking = True
            self.counts["wakeups"] += 1
            self.metrics.activator_wakeups.inc()
            log.info("a request came while no shard runs: waking the fleet")
        elif not reading.empty:
            self._waking = False
        return reading

    async def _record(self, sid: str) -> None:
        try:
            await self.record(sid)
        except Exception as exc:  # the request is still held; the next renewal may succeed
            log.warning("could not record demand for %r: %s", sid or "(no session id)", exc)

    def _done(self, outcome: str, began: float, answer: Answer) -> Answer:
        seconds = self.clock.monotonic() - began
        self.counts[outcome] += 1
        self.metrics.activator_requests.labels(outcome=outcome).inc()
        self.metrics.activator_hold_seconds.labels(outcome=outcome).observe(seconds)
        if outcome == "passed":
            self.recent.append(seconds)
            headers = {**answer.headers, "X-Chatscale-Held": f"{seconds:.3f}"}
            return Answer(answer.status, answer.body, headers)
        return answer

    def _overflow_message(self) -> str:
        return f"{self.held} requests already wait for a shard (activator.max_held); retry"

    @contextmanager
    def _line(self, sid: str) -> Iterator[asyncio.Lock]:
        """The lock keeping requests for `sid` in order (asyncio.Lock wakes waiters in FIFO
        order); requests without a session id need no order among themselves."""
        if not sid:
            yield asyncio.Lock()
            return
        lock, users = self._lines.get(sid, (asyncio.Lock(), 0))
        self._lines[sid] = (lock, users + 1)
        try:
            yield lock
        finally:
            lock, users = self._lines[sid]
            if users == 1:
                del self._lines[sid]
            else:
                self._lines[sid] = (lock, users - 1)

    def stats(self) -> dict[str, object]:
        """What the status page shows about this activator."""
        return {
            "held": self.held,
            **self.counts,
            "hold_p50_seconds": quantile(self.recent, 0.5),
            "hold_p95_seconds": quantile(self.recent, 0.95),
        }
