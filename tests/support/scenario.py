"""The end-to-end scenario, run against the whole system in either mode (Docker or local).

Create 10 sessions through nginx, watch the fleet grow without any shard holding more than
`max_sessions`, log every session in through the stand-in site, kill a shard and see its sessions
come back without a new scan, delete everything and see the fleet shrink. Every response's shard
is checked against the registry. Timings of each phase are returned for docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from chatscale_contract.keys import Keys

KEYS = Keys("cs:")
API_KEY = "e2e-key"
MAX_SESSIONS = 4
SESSIONS = [f"e2e-{n}" for n in range(10)]


def e2e_policy() -> dict[str, Any]:
    """Small shards so a 2-core machine can hold the scenario (4 sessions each)."""
    return {
        "min_shards": 1,
        "max_shards": 5,
        "target_utilization": 1.0,
        "buffer": {"slots": 1, "percent": 0},
        "scale_up": {"max_step": 4},
        "scale_down": {"stabilization": 20, "max_step": 1},
    }


@dataclass
class System:
    """How the scenario reaches one running system."""

    front: str
    status: str
    redis_url: str
    site: str
    """The stand-in site as the test reaches it (for scans and its state)."""
    kill: Callable[[str], Awaitable[None]]
    """SIGKILL one shard (its container, or its process)."""


@dataclass
class Report:
    timings: dict[str, float] = field(default_factory=dict)
    max_seen: int = 0
    """Most sessions any shard held at any observed moment."""
    checked: int = 0
    misrouted: list[str] = field(default_factory=list)
    peak_shards: int = 0
    watch_errors: int = 0


Stage = Callable[["Scenario"], Awaitable[None]]


class Scenario:
    def __init__(
        self,
        system: System,
        http: aiohttp.ClientSession,
        started: float,
        after_failover: Stage | None = None,
        at_end: Stage | None = None,
    ):
        """`after_failover`: one more stage, run while every session is logged in (a rollout);
        `at_end`: one more once the fleet is back to min_shards."""
        self.s = system
        self.http = http
        self.started = started
        self.after_failover = after_failover
        self.at_end = at_end
        self.redis = aioredis.Redis.from_url(system.redis_url, decode_responses=True)
        self.report = Report()

    # --- plumbing -------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        headers = {"X-Api-Key": API_KEY}
        async with self.http.request(method, self.s.front + path, json=body, headers=headers) as r:
            data = await r.json(content_type=None) if r.content_type == "application/json" else {}
            return r.status, data, r.headers.get("X-Shard-Id", "")

    async def checked(self, method: str, path: str, sid: str, body: Any = None) -> Any:
        """A request for `sid` through nginx; the answering shard must be the registry owner."""
        before = await self.redis.hget(KEYS.session(sid), "owner")
        code, data, shard = await self.call(method, path, body)
        after = await self.redis.hget(KEYS.session(sid), "owner")
        self.report.checked += 1
        # The owner before the request (a DELETE removes it) or after it (a PUT claims it).
        if code < 300 and shard not in (before, after):
            self.report.misrouted.append(f"{method} {path}: {shard}, owner {before}/{after}")
        return code, data

    async def status(self) -> dict[str, Any]:
        async with self.http.get(f"{self.s.status}/api/status") as resp:
            return dict(await resp.json())

    async def site_state(self) -> dict[str, Any]:
        async with self.http.get(f"{self.s.site}/api/state") as resp:
            return dict(await resp.json())

    async def ready_shards(self) -> list[str]:
        try:
            shards = (await self.status())["shards"]
        except (aiohttp.ClientError, ValueError):
            return []
        return [s["id"] for s in shards if s["state"] == "ready"]

    async def front_routes(self) -> bool:
        """The front serves the config the autoscaler last confirmed, and it has shards."""
        try:
            nginx = (await self.status())["nginx"]
            async with self.http.get(f"{self.s.front}/__chatscale/config") as resp:
                served = (await resp.json(content_type=None)).get("version")
        except (aiohttp.ClientError, ValueError, AttributeError):
            return False
        ring = await self.redis.get(KEYS.ring)
        return served == nginx["applied_version"] and bool(ring and json.loads(ring)["shards"])

    async def until(self, check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
        began = time.monotonic()
        while not await check():
            if time.monotonic() - began > timeout:
                raise TimeoutError(
                    f"{what}: not within {timeout:g} s; status {await self.status()}"
                )
            await asyncio.sleep(0.5)
        return time.monotonic() - began

    async def watch_capacity(self) -> None:
        """Sample every shard's session set all along: none may ever exceed MAX_SESSIONS."""
        while True:
            try:
                for shard_id in await self.redis.zrange(KEYS.shards, 0, -1):
                    held = await self.redis.scard(KEYS.shard_sessions(shard_id))
                    self.report.max_seen = max(self.report.max_seen, held)
            except RedisConnectionError:
                # The test's own connection, through a published port, was reset (seen once on
                # a swarm's host-mode port): the next sample reconnects. The phases would fail
                # if Redis itself were gone.
                self.report.watch_errors += 1
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                self.report.peak_shards = max(
                    self.report.peak_shards, len(await self.ready_shards())
                )
            await asyncio.sleep(0.3)

    # --- the phases -----------------------------------------------------------------------

    async def run(self) -> Report:
        watcher = asyncio.create_task(self.watch_capacity())
        try:
            await self.first_shard()
            await self.create_all()
            await self.log_in_all()
            await self.failover()
            if self.after_failover is not None:
                await self.after_failover(self)
            await self.scale_in()
            if self.at_end is not None:
                await self.at_end(self)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.redis.aclose()
        return self.report

    async def first_shard(self) -> None:
        """Up: a shard is ready and the front serves a config that routes to it (the ring has
        been published, which happens only once every live front serves that config)."""

        async def one() -> bool:
            return bool(await self.ready_shards()) and await self.front_routes()

        await self.until(one, 240, "the first shard ready and routed by the front")
        self.report.timings["up_to_first_shard_ready"] = time.monotonic() - self.started

    async def create_all(self) -> None:
        """PUT every session through nginx; a 503 (no room yet) is retried as a client would."""
        began = time.monotonic()
        first_refusal: float | None = None
        pending = list(SESSIONS)
        while pending:
            assert time.monotonic() - began < 300, f"sessions never placed: {pending}"
            for sid in list(pending):
                code, body = await self.checked("PUT", f"/api/sessions/{sid}", sid, {})
                if code in (200, 201):
                    pending.remove(sid)
                elif code == 503:
                    first_refusal = first_refusal or time.monotonic()
                else:
                    raise AssertionError(f"PUT {sid}: {code} {body}")
            if pending:
                await asyncio.sleep(1)
        self.report.timings["all_10_placed"] = time.monotonic() - began
        if first_refusal is not None:
            self.report.timings["scale_out_reaction"] = time.monotonic() - first_refusal

        async def three() -> bool:
            return len(await self.ready_shards()) >= 3

        await self.until(three, 120, "a fleet of at least 3 shards")

    async def log_in_all(self) -> None:
        began = time.monotonic()
        for sid in SESSIONS:
            await self.wait_status(sid, "SCAN_QR_CODE", 120)
            code, qr = await self.checked("GET", f"/api/sessions/{sid}/qr?format=raw", sid)
            assert code == 200, qr
            async with self.http.post(f"{self.s.site}/api/scan", json={"ref": qr["qr"]}) as resp:
                assert resp.status == 200, await resp.text()
        for sid in SESSIONS:
            await self.wait_status(sid, "WORKING", 120)
        self.report.timings["all_10_working_after_scan"] = time.monotonic() - began
        for sid in SESSIONS:
            code, view = await self.checked("GET", f"/api/sessions/{sid}", sid)
            assert code == 200 and view["status"] == "WORKING", view
        await self.fleet_list()

    async def fleet_list(self) -> None:
        """Any shard behind the front lists every session of the fleet, alike; the front serves
        the API's OpenAPI document."""
        answered: set[str] = set()
        for _ in range(9):
            code, listing, shard = await self.call("GET", "/api/sessions?status=WORKING")
            assert code == 200, listing
            assert sorted(s["id"] for s in listing["sessions"]) == sorted(SESSIONS), listing
            answered.add(shard)
        assert len(answered) >= 2, f"one shard answered every listing: {answered}"
        code, document, _ = await self.call("GET", "/openapi.json")
        assert code == 200 and "/api/sessions" in document["paths"], document

    async def wait_status(self, sid: str, status: str, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def reached() -> bool:
            code, view = await self.checked("GET", f"/api/sessions/{sid}", sid)
            found.update(view if code == 200 else {})
            return code == 200 and bool(view.get("status") == status)

        await self.until(reached, timeout, f"{sid} {status}")
        return found

    async def failover(self) -> None:
        """SIGKILL the fullest shard: its sessions come back WORKING without a new scan."""
        owners = {sid: await self.redis.hget(KEYS.session(sid), "owner") for sid in SESSIONS}
        victim = max(set(owners.values()), key=lambda s: list(owners.values()).count(s))
        moved = [sid for sid, owner in owners.items() if owner == victim]
        scans = len((await self.site_state())["sessions"])
        await self.s.kill(victim)
        killed = time.monotonic()

        async def all_back() -> bool:
            for sid in moved:
                code, view, _ = await self.call("GET", f"/api/sessions/{sid}")
                if code != 200 or view.get("status") != "WORKING" or view.get("token", 0) <= 1:
                    return False
            return True

        await self.until(all_back, 240, f"{victim}'s {len(moved)} sessions WORKING again")
        self.report.timings["failover_kill_to_all_working"] = time.monotonic() - killed
        self.report.timings["failover_sessions"] = len(moved)
        assert len((await self.site_state())["sessions"]) == scans, "a restore needed a new scan"
        for sid in SESSIONS:
            code, view = await self.checked("GET", f"/api/sessions/{sid}", sid)
            assert code == 200 and view["status"] == "WORKING", view

    async def scale_in(self) -> None:
        for sid in SESSIONS:
            code, body = await self.checked("DELETE", f"/api/sessions/{sid}", sid)
            assert code == 200 and body["deleted"], body
        deleted = time.monotonic()

        async def back_to_one() -> bool:
            return len((await self.status())["shards"]) == 1

        await self.until(back_to_one, 240, "the fleet back to min_shards")
        self.report.timings["scale_in_after_last_delete"] = time.monotonic() - deleted
        for sid in SESSIONS:
            assert not await self.redis.exists(KEYS.session(sid)), f"{sid} left in the registry"
