"""A control-plane stand-in for the shard: heartbeats and session bookkeeping, no browser.

Used where a test is about the autoscaler (scaling, replacement, leadership), not about sessions.
It goes through the shard's own registry code (the claim and release scripts, the key builder,
the heartbeat wire format), so a change to the Redis schema breaks these tests too; and it
answers the endpoints the autoscaler calls. Hundreds can run on two cores. Real shards are
tested in tests/shard and end to end.

Run in-process (`HeartbeatShard(...)`, beating when told or on its own with `run()`), as a
process (`python heartbeat_shard.py`, settings from the environment variables a real shard
reads; like a real shard it exits at once when BROWSER_EXECUTABLE names no executable), or in
the test image built from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError
from shard.registry import Full, OwnedElsewhere, Registry

from chatscale_contract.beat import Beat, ReportedState
from chatscale_contract.clock import SYSTEM, Clock
from chatscale_contract.keys import Keys


@dataclass
class Settings:
    shard_id: str
    port: int
    host: str = "127.0.0.1"
    addr: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "cs:"
    capacity: int = 50
    interval: float = 1.0
    timeout: float = 4.0
    lease: float | None = None
    """TTL of the heartbeat key in real seconds; default `timeout`. Tests on a fake clock make
    it long, because Redis expires keys in real time while freshness is judged by `ts`."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        port = int(env.get("PORT", "8000"))
        return cls(
            shard_id=env["SHARD_ID"],
            port=port,
            host=env.get("HOST", "0.0.0.0"),
            addr=env.get("SHARD_ADDR", f"127.0.0.1:{port}"),
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            prefix=env.get("KEY_PREFIX", "cs:"),
            capacity=int(env.get("MAX_SESSIONS", "50")),
            interval=float(env.get("HEARTBEAT_INTERVAL", "1")),
            timeout=float(env.get("HEARTBEAT_TIMEOUT", "4")),
        )


class HeartbeatShard:
    def __init__(self, settings: Settings, clock: Clock = SYSTEM):
        self.s = settings
        self.clock = clock
        self.redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.registry = Registry(
            self.redis, Keys(settings.prefix), settings.shard_id, settings.capacity, clock
        )
        self.started_at = clock.time()
        self.draining_since: float | None = None
        self.runner: web.AppRunner | None = None
        self.routes: list[web.RouteDef] = []
        """Extra endpoints a test adds before `start` (e.g. one recording what reaches it)."""

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    async def beat(self) -> None:
        sessions = len(await self.registry.owned())
        state = ReportedState.ACCEPTING
        if self.draining:
            state = ReportedState.DRAINING
        elif sessions >= self.s.capacity:
            state = ReportedState.FULL
        beat = Beat(
            id=self.s.shard_id,
            addr=self.s.addr or f"127.0.0.1:{self.s.port}",
            state=state,
            sessions=sessions,
            capacity=self.s.capacity,
            memory_bytes=0,
            memory_limit_bytes=0,
            ts=self.clock.time(),
            boot=str(os.getpid()),
            version="heartbeat-stand-in",
            started_at=self.started_at,
            draining_since=self.draining_since,
        )
        await self.registry.beat(beat, ttl=self.s.lease or self.s.timeout)

    # --- sessions, through the registry's scripts --------------------------------------------

    async def create(self, sid: str) -> bool:
        """Claim `sid` here as a real shard would; False (and demand recorded) if full."""
        if self.draining:
            return False
        try:
            await self.registry.claim(sid)
        except Full:
            await self.registry.mark_pending(sid)
            return False
        except OwnedElsewhere:
            return False
        return True

    async def end(self, sid: str) -> None:
        """The session is deleted by its user: forgotten, its slot free."""
        token = int((await self.registry.record(sid)).get("token", 0))
        await self.registry.forget(sid, token)

    async def end_all(self) -> None:
        for sid in await self.registry.owned():
            await self.end(sid)

    async def release_all(self) -> None:
        """Hand every session back as an orphan (what a draining shard does when no other shard
        adopts it directly); the autoscaler then places them on shards with room."""
        for sid in await self.registry.owned():
            token = int((await self.registry.record(sid)).get("token", 0))
            await self.registry.release(sid, token, keep_running=True)

    # --- the endpoints the autoscaler calls ---------------------------------------------------

    async def put_session(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if self.draining:
            return web.json_response({"error": "draining"}, status=503)
        if not await self.create(sid):
            return web.json_response({"error": "full or owned elsewhere"}, status=503)
        return web.json_response({"id": sid, "shard": self.s.shard_id}, status=201)

    async def delete_session(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if sid not in await self.registry.owned():
            return web.json_response({"error": f"no session {sid!r} here"}, status=404)
        await self.end(sid)
        return web.json_response({"id": sid, "deleted": True})

    async def drain(self, request: web.Request) -> web.Response:
        self.draining_since = self.clock.time()
        await self.release_all()
        await self.beat()
        return web.json_response({"state": "draining"}, status=202)

    async def undrain(self, request: web.Request) -> web.Response:
        self.draining_since = None
        await self.beat()
        return web.json_response({"state": "accepting"})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "shard": self.s.shard_id})

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the endpoints and send the first heartbeat, as a shard does when it boots."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/health", self.health),
                web.put("/api/sessions/{id}", self.put_session),
                web.delete("/api/sessions/{id}", self.delete_session),
                web.post("/admin/drain", self.drain),
                web.post("/admin/undrain", self.undrain),
                *self.routes,
            ]
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.s.host, self.s.port).start()
        with contextlib.suppress(OSError, RedisError):
            await self.beat()

    async def stop(self) -> None:
        """The process ends: the server closes; the heartbeat key stays until its lease lapses."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.redis.aclose()

    async def withdraw(self) -> None:
        """A clean exit: remove the heartbeat so nobody waits for it to expire."""
        await self.registry.withdraw()

    async def run(self) -> None:
        """Serve and beat on the interval until cancelled (a crash: the heartbeat just stops)."""
        await self.start()
        try:
            while True:
                await self.clock.sleep(self.s.interval)
                with contextlib.suppress(OSError, RedisError):
                    await self.beat()
        finally:
            await self.stop()


async def main() -> int:
    browser = os.environ.get("BROWSER_EXECUTABLE", "")
    if browser and not os.access(browser, os.X_OK):
        # As a real shard whose Chromium cannot launch: it exits before its first heartbeat.
        print(f"BROWSER_EXECUTABLE {browser!r} is not an executable", file=sys.stderr)
        return 1
    shard = HeartbeatShard(Settings.from_env())
    task = asyncio.create_task(shard.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    client = aioredis.Redis.from_url(shard.s.redis_url, decode_responses=True)
    await client.delete(Keys(shard.s.prefix).shard(shard.s.shard_id))
    await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
