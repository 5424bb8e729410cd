"""The front agent: keeps the nginx beside it serving the config the autoscaler publishes.

`autoscaler front-agent` runs wherever an nginx front runs (its container, a Swarm node, or
next to a local nginx) and, every `nginx.agent_interval` seconds and at once when nudged:

1. keeps nginx alive: if its master is gone (crashed, killed), starts it again on the last good
   config on disk, so a front never stays down waiting for a person;
2. applies a newly published generation: writes the shards' addresses into `nginx.hosts_file`
   where one is set, then the same steps as ever (`apply.NginxApplier`: `nginx -t`, atomic
   install, reload, confirm on its own port); a refused or unconfirmed
   config leaves the last good one serving and is retried after `RETRY_AFTER_FAILURE`;
3. reports which generation its nginx serves (`Keys.front`, with a TTL), so the autoscaler
   publishes a new ring to the shards only once every live front serves it, and nudges the
   autoscaler when that changed, so the ring follows at once.

Nothing is shared between nodes but Redis: no file, no Docker socket, no signal from afar.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from autoscaler.front.apply import NginxApplier
from autoscaler.front.fronts import FrontReport
from autoscaler.front.reload import Reloader, kill_leftovers, running_pid
from chatscale_contract.clock import Clock
from chatscale_contract.config import NginxSettings
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
RETRY_AFTER_FAILURE = 2.0
"""Seconds before a generation that was refused or not confirmed is tried again. Short: the
commonest refusal is passing (on Swarm, a new shard's name reaches every node's DNS a moment
after the shard starts, and `nginx -t` fails until it has), and a retry costs one `nginx -t`."""


@dataclass(frozen=True)
class AgentIdentity:
    front_id: str
    """Unique per front (its container's hostname by default)."""
    node: str
    """The machine it runs on, as the status page should name it."""


class FrontAgent:
    def __init__(
        self,
        nginx: NginxSettings,
        identity: AgentIdentity,
        reloader: Reloader,
        client: aioredis.Redis,
        keys: Keys,
        clock: Clock,
    ):
        self.nginx = nginx
        self.identity = identity
        self.reloader = reloader
        self.applier = NginxApplier(
            nginx,
            reloader,
            confirm_url=f"http://127.0.0.1:{nginx.listen}",
            confirm_timeout=nginx.confirm_timeout,
        )
        self.redis = client
        self.keys = keys
        self.clock = clock
        self.generation = ""
        """The generation nginx is confirmed to serve."""
        self.version = ""
        self.error = ""
        self.error_generation = ""
        self.retry_at = 0.0
        self.restarts = 0
        """How often nginx had to be started again after it died."""
        self._master: int | None = None
        """The last nginx master seen alive (whose workers to clear away if it dies)."""

    async def step(self) -> None:
        """One round: nginx alive, the newest generation applied (when due), the report sent."""
        served = self.generation
        try:
            await self._keep_alive()
            await self._sync()
        except RedisError:
            raise
        except Exception as exc:  # nginx would not start, a file would not write: report it
            log.error("front agent round failed (retrying): %s", exc)
            self.error, self.error_generation = f"{type(exc).__name__}: {exc}", ""
        self._master = running_pid(Path(self.nginx.pid_path)) or self._master
        await self._report()
        if self.generation != served:
            # The autoscaler publishes the new ring once every front serves the config: ask for
            # a pass now rather than at its next interval.
            await self.redis.publish(self.keys.nudge, f"front {self.identity.front_id}")

    async def run(self, wake: asyncio.Event) -> None:
        """Rounds every `agent_interval` seconds, or at once when `wake` is set (a nudge); and,
        beside them, a report every interval, so a round that takes long (a slow `nginx -t`, a
        confirmation waiting its full timeout) never makes this front look dead meanwhile."""
        await asyncio.gather(self._rounds(wake), self._reports())

    async def _rounds(self, wake: asyncio.Event) -> None:
        while True:
            try:
                await self.step()
            except (RedisError, OSError) as exc:
                log.warning("front agent round failed (retrying): %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.nginx.agent_interval)
            wake.clear()

    async def _reports(self) -> None:
        while True:
            await asyncio.sleep(self.nginx.agent_interval)
            try:
                await self._report()
            except (RedisError, OSError) as exc:
                log.warning("front report failed (retrying): %s", exc)

    async def _keep_alive(self) -> None:
        if running_pid(Path(self.nginx.pid_path)) is not None:
            return
        if not self.generation:
            return  # nothing applied yet: nginx starts with the first config
        self.restarts += 1
        left = await asyncio.to_thread(kill_leftovers, self._master) if self._master else 0
        log.error(
            "nginx is not running (%d orphaned worker(s) killed); starting it again on the last"
            " good config",
            left,
        )
        await self.reloader.reload()  # a local reloader starts nginx when none runs

    async def _sync(self) -> None:
        wanted = await self.redis.hget(self.keys.front_config, "generation")
        if not wanted or wanted == self.generation:
            return
        if wanted == self.error_generation and self.clock.monotonic() < self.retry_at:
            return
        # Read again as a whole: a newer config may have been published meanwhile.
        generation, version, text, hosts = await self.redis.hmget(
            self.keys.front_config, "generation", "version", "text", "hosts"
        )
        if not generation or text is None:
            return
        if self.nginx.hosts_file:
            await asyncio.to_thread(
                pin_hosts, Path(self.nginx.hosts_file), json.loads(hosts or "{}")
            )
        # force: the same text as on disk still needs a reload (a shard moved) and proof.
        result = await self.applier.apply(text, version, force=True)
        if result.ok:
            log.info("serving generation %s (table %s)", generation, version)
            self.generation, self.version, self.error, self.error_generation = (
                generation,
                version,
                "",
                "",
            )
            return
        log.error("generation %s not applied (the last good config serves): %s", generation, result)
        self.error, self.error_generation = result.error or "failed", generation
        self.retry_at = self.clock.monotonic() + RETRY_AFTER_FAILURE

    async def _report(self) -> None:
        report = FrontReport(
            id=self.identity.front_id,
            node=self.identity.node,
            generation=self.generation,
            version=self.version,
            ts=self.clock.time(),
            error=self.error,
            error_generation=self.error_generation,
        )
        key = self.keys.front(self.identity.front_id)
        ttl_ms = int(max(self.nginx.front_timeout, 2 * self.nginx.agent_interval) * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=report.fields())
            pipe.pexpire(key, ttl_ms)
            pipe.zadd(self.keys.fronts, {self.identity.front_id: report.ts})
            # Fronts gone for a day are forgotten (their report keys expired long ago).
            pipe.zremrangebyscore(self.keys.fronts, "-inf", report.ts - 86400)
            await pipe.execute()

    async def withdraw(self) -> None:
        """A clean exit: the autoscaler stops waiting for this front at once."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.front(self.identity.front_id))
            pipe.zrem(self.keys.fronts, self.identity.front_id)
            await pipe.execute()

    async def stop_nginx(self) -> None:
        """Let nginx finish the requests in flight (SIGQUIT), bounded by its shutdown timeout."""
        pid = running_pid(Path(self.nginx.pid_path))
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        for _ in range(int(self.nginx.worker_shutdown_timeout * 10) + 20):
            if running_pid(Path(self.nginx.pid_path)) is None:
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


HOSTS_BEGIN = "# chatscale shards: kept by the front agent, do not edit"
HOSTS_END = "# end of chatscale shards"


def hosts_text(current: str, hosts: Mapping[str, str]) -> str:
    """`current` (a hosts file) with its chatscale block replaced by `hosts` (name -> IP).
    Purely computational, no side effects."""
    lines = current.splitlines()
    if HOSTS_BEGIN in lines and HOSTS_END in lines[lines.index(HOSTS_BEGIN) :]:
        start = lines.index(HOSTS_BEGIN)
        end = lines.index(HOSTS_END, start)
        lines = lines[:start] + lines[end + 1 :]
    block = [f"{ip} {name}" for name, ip in sorted(hosts.items())]
    return "\n".join([*lines, HOSTS_BEGIN, *block, HOSTS_END]) + "\n"


def pin_hosts(path: Path, hosts: Mapping[str, str]) -> None:
    """Write the shards' addresses into `path`, leaving every other line as it was.

    Written in place, not replaced: in a container /etc/hosts is a bind mount, which a rename
    cannot replace. nginx reads it only when it tests or loads a config, which happens after.
    """
    current = path.read_text() if path.exists() else ""
    wanted = hosts_text(current, hosts)
    if wanted != current:
        with path.open("r+" if path.exists() else "w") as handle:
            handle.write(wanted)
            handle.truncate()
