"""A control-plane stand-in for the shard: heartbeats and session bookkeeping, no browser.

Used where a test is about the autoscaler (scaling, replacement, leadership), not about sessions:
it speaks the same Redis schema (docs/redis-schema.md) and the admin endpoints the autoscaler
calls, so hundreds can run on two cores. Real shards are tested in tests/shard and end to end.

Run in-process (`HeartbeatShard(...).run()`), as a process (`python heartbeat_shard.py`, settings
from the same environment variables a real shard reads), or in the test image built from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError


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
    def __init__(self, settings: Settings):
        self.s = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.state = "accepting"
        self.paused = False
        """Skip heartbeats (a test's way of cutting this shard off from Redis)."""
        self.draining_since: float | None = None
        self.runner: web.AppRunner | None = None

    def key(self, *parts: str) -> str:
        return self.s.prefix + ":".join(parts)

    @property
    def sessions_key(self) -> str:
        return self.key("shard", self.s.shard_id, "sessions")

    async def beat(self) -> None:
        sessions = await self.redis.scard(self.sessions_key)
        state = self.state
        if state == "accepting" and sessions >= self.s.capacity:
            state = "full"
        fields = {
            "id": self.s.shard_id,
            "addr": self.s.addr or f"127.0.0.1:{self.s.port}",
            "state": state,
            "sessions": sessions,
            "capacity": self.s.capacity,
            "memory_bytes": 0,
            "memory_limit_bytes": 0,
            "version": "heartbeat-stand-in",
            "started_at": time.time(),
            "boot": str(os.getpid()),
            "ts": time.time(),
            "draining_since": self.draining_since or "",
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key("shard", self.s.shard_id), mapping=fields)
            pipe.pexpire(self.key("shard", self.s.shard_id), int(self.s.timeout * 1000))
            pipe.zadd(self.key("shards"), {self.s.shard_id: time.time()})
            await pipe.execute()

    async def put_session(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if self.state == "draining":
            return web.json_response({"error": "draining"}, status=503)
        if await self.redis.scard(self.sessions_key) >= self.s.capacity:
            return web.json_response({"error": "full"}, status=503)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self.sessions_key, sid)
            pipe.srem(self.key("orphans"), sid)
            pipe.hset(
                self.key("session", sid), mapping={"owner": self.s.shard_id, "desired": "running"}
            )
            await pipe.execute()
        return web.json_response({"id": sid, "shard": self.s.shard_id}, status=201)

    async def drain(self, request: web.Request) -> web.Response:
        """Like a real shard: stop accepting and hand every session off (here: release them
        as orphans, which the autoscaler then places on shards with room)."""
        self.state, self.draining_since = "draining", time.time()
        for sid in await self.redis.smembers(self.sessions_key):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.srem(self.sessions_key, sid)
                pipe.sadd(self.key("orphans"), sid)
                pipe.hset(self.key("session", sid), "owner", "")
                await pipe.execute()
        await self.beat()
        return web.json_response({"state": self.state}, status=202)

    async def undrain(self, request: web.Request) -> web.Response:
        self.state, self.draining_since = "accepting", None
        await self.beat()
        return web.json_response({"state": self.state})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "shard": self.s.shard_id})

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/health", self.health),
                web.put("/api/sessions/{id}", self.put_session),
                web.post("/admin/drain", self.drain),
                web.post("/admin/undrain", self.undrain),
            ]
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.s.host, self.s.port).start()

    async def run(self) -> None:
        """Serve and beat until cancelled (a crash: the heartbeat just stops)."""
        await self.start()
        try:
            while True:
                with contextlib.suppress(OSError, RedisError):
                    if not self.paused:
                        await self.beat()
                await asyncio.sleep(self.s.interval)
        finally:
            if self.runner is not None:
                await self.runner.cleanup()
            await self.redis.aclose()

    async def withdraw(self) -> None:
        """A clean exit: remove the heartbeat so nobody waits for it to expire."""
        client = aioredis.Redis.from_url(self.s.redis_url)
        await client.delete(self.key("shard", self.s.shard_id))
        await client.aclose()


async def main() -> int:
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
    await shard.withdraw()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
