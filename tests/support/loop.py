"""Driving the control loop in tests: real Redis, an in-memory runtime, and a fake clock.

A pass is `step`: every running stand-in shard beats, the daemon reconciles, and the clock moves
on by one reconcile interval. Nothing waits on real time, so a 300-second stabilization window
costs a few hundred fast passes, not five minutes.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from autoscaler.loop.daemon import Daemon, Decision
from chatscale_contract.config import Config
from chatscale_contract.keys import Keys
from support.clock import FakeClock
from support.memruntime import MemoryRuntime

KEYS = Keys("cs:")
CAPACITY = 5
Check = Callable[[], bool | Awaitable[bool]]


def make_config(redis_url: str, **policy: Any) -> Config:
    """Small settings: 5 sessions per shard, heartbeats every 0.2 s (fake time)."""
    return Config.model_validate(
        {
            "redis": {"url": redis_url},
            "shard": {"max_sessions": CAPACITY, "boot_timeout": 3},
            "heartbeat": {"interval": 0.2, "timeout": 1.0},
            "policy": {
                "min_shards": 1,
                "max_shards": 6,
                "target_utilization": 1.0,
                "buffer": {"slots": 1, "percent": 0},
                "scale_down": {"stabilization": 2, "max_step": 1},
                **policy,
            },
            # The lock's TTL runs in Redis, in real time; a test that needs it to lapse says so
            # (`lapse_leader_lock`), so it is long enough never to lapse on a slow machine.
            "reconcile": {"interval": 0.3, "leader_ttl": 30},
            "nginx": {"enabled": False},
        }
    )


@dataclass
class Loop:
    """One test's control loop: its clock, runtime and daemons (closed when the test ends)."""

    redis_url: str
    client: aioredis.Redis
    clock: FakeClock
    runtime: MemoryRuntime
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def daemon(
        self, config: Config, holder: str = "test-a", runtime: Any = None, **kwargs: Any
    ) -> Daemon:
        daemon = Daemon(
            config, runtime=runtime or self.runtime, holder=holder, clock=self.clock, **kwargs
        )
        return await self.stack.enter_async_context(daemon)

    async def step(self, daemon: Daemon) -> Decision:
        """One reconcile interval: the shards beat, the daemon passes, time moves on."""
        await self.runtime.beat()
        decision = await daemon.reconcile()
        assert decision is not None, f"the pass failed: {daemon.state.last_error}"
        self.clock.advance(daemon.config.reconcile.interval)
        return decision

    async def converge(
        self, daemon: Daemon, check: Check, what: str = "", passes: int = 200
    ) -> Decision:
        """Run passes until `check` holds; fail naming `what` and the last plan otherwise."""
        for _ in range(passes):
            decision = await self.step(daemon)
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return decision
        last = daemon.state.decisions[0] if daemon.state.decisions else None
        detail = f"last plan: {last.plan}, events {last.events}" if last else "no pass"
        raise AssertionError(f"did not converge in {passes} passes: {what}; {detail}")

    async def place(self, sessions: list[str]) -> list[str]:
        """Create sessions on running shards with room, through the stand-ins' claim script;
        the rest are refused and recorded as demand. Returns the refused ids."""
        refused = []
        for sid in sessions:
            for shard_id in self.runtime.running():
                if await self.runtime.shard(shard_id).create(sid):
                    break
            else:
                refused.append(sid)
        return refused

    async def owned(self, shard_id: str) -> int:
        return int(await self.client.scard(KEYS.shard_sessions(shard_id)))

    async def beating(self, count: int) -> bool:
        """`count` shards run and each has a heartbeat in Redis."""
        running = self.runtime.running()
        present = [await self.client.exists(KEYS.shard(s)) for s in running]
        return len(running) == count and all(present)

    async def lapse_leader_lock(self) -> None:
        """The leader died and its lock's TTL ran out (Redis keeps real time, so the test ends
        the TTL rather than waiting for it)."""
        await self.client.delete(KEYS.leader)
