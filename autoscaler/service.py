"""`autoscaler run`: the daemon on a schedule, its status server, signals and nudges.

Passes run on an APScheduler interval job; each schedule window adds a cron job that triggers a
pass as the window opens; a message on the nudge channel (a shard started or became full, a
front serves a new config) triggers one at once, and a pass that leaves work waiting (a batch of
front changes) gets a follow-up when it falls due. SIGHUP reloads the config; SIGTERM stops the
daemon cleanly (shards keep running). `autoscaler front-agent` runs here too (`front_agent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from redis.exceptions import RedisError

from autoscaler.activator.hold import Activator
from autoscaler.activator.server import running
from autoscaler.channel import listen
from autoscaler.front.agent import AgentIdentity, FrontAgent
from autoscaler.front.reload import LocalReloader
from autoscaler.loop import auth
from autoscaler.loop.daemon import Daemon
from autoscaler.redisconn import connect
from autoscaler.runtimes.base import RuntimeFailure
from autoscaler.web.status import init_app
from autoscaler.webhooks.deliver import Deliverer
from chatscale_contract.clock import SYSTEM
from chatscale_contract.config import Config
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
PASS_JOB = "reconcile"
CANCEL_WAIT = 5.0
"""Seconds a stopping daemon waits for each cancelled background job."""


class Reconciles(Protocol):
    async def reconcile(self) -> object: ...

    def follow_up(self) -> float | None: ...


class Nudger:
    """Runs the reconcile pass sooner than its next interval, without ever running it later.

    A burst of nudges (every refused create sends one) makes one pass: a pass starts at least
    `spacing` seconds after the one before, twice as long as that one took (at least
    MIN_SPACING), so nudges never keep the daemon busy more than half the time, and a held
    request on a small fleet waits a tenth of a second, not half a second, for its pass. A
    nudge for a moment at or after the next planned run changes nothing. None is lost: a nudge
    that arrives while a pass runs makes another pass right after it, run in the same job
    (APScheduler would skip a run asked for while its one allowed instance is still running),
    because what it announced may have come too late for the running pass.
    """

    MIN_SPACING = 0.1

    def __init__(self, scheduler: AsyncIOScheduler):
        self.scheduler = scheduler
        self.spacing = self.MIN_SPACING
        self.started = -self.spacing
        """When the last pass started (monotonic)."""
        self.running = False
        self.missed = False

    def __call__(self, delay: float = 0.0) -> None:
        """Have a pass run within `delay` seconds (or sooner, if one is planned sooner)."""
        if self.running:
            self.missed = self.missed or delay <= 0
            return
        job = self.scheduler.get_job(PASS_JOB)
        if job is None:
            return
        now = time.monotonic()
        wanted = max(delay, self.started + self.spacing - now, 0.0)
        at = datetime.now(UTC) + timedelta(seconds=wanted)
        planned = job.next_run_time
        if planned is None or at < planned:
            job.modify(next_run_time=at)

    async def pass_of(self, daemon: Reconciles) -> None:
        """A reconcile pass; another right after it (spaced) while nudges come in during one;
        then a run planned for when work the passes left waiting falls due."""
        while True:
            self.running, self.missed = True, False
            self.started = time.monotonic()
            try:
                await daemon.reconcile()
            finally:
                self.running = False
                took = time.monotonic() - self.started
                self.spacing = max(self.MIN_SPACING, 2 * took)
            if not self.missed:
                break
            await asyncio.sleep(max(0.0, self.started + self.spacing - time.monotonic()))
        due = daemon.follow_up()
        if due is not None:
            self(due)


def schedule_jobs(scheduler: AsyncIOScheduler, daemon: Daemon, nudge: Nudger) -> None:
    """The interval job and one job per schedule window; called again after a reload."""
    config = daemon.config
    for job in scheduler.get_jobs():
        job.remove()
    scheduler.add_job(
        nudge.pass_of,
        "interval",
        args=[daemon],
        seconds=config.reconcile.interval,
        id=PASS_JOB,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    for window in config.policy.schedules:
        trigger = CronTrigger.from_crontab(window.cron, timezone=ZoneInfo(window.timezone))
        scheduler.add_job(nudge, trigger, id=f"schedule:{window.name}")


async def serve(config: Config, config_path: Path | None) -> int:
    """`autoscaler run`: passes, status server and signal handling until SIGTERM or SIGINT."""
    async with contextlib.AsyncExitStack() as stack:
        daemon = await stack.enter_async_context(Daemon(config, config_path))
        stack.push_async_callback(
            _cancel, asyncio.create_task(_publish_keys(daemon), name="publish keys")
        )
        try:
            await daemon.runtime.check()
        except RuntimeFailure as exc:
            log.error("cannot run shards with runtime %s: %s", config.runtime.kind, exc)
            return 2
        activator = None
        try:
            if config.activator.enabled:
                activator = await stack.enter_async_context(
                    running(config, daemon.redis, daemon.metrics, SYSTEM)
                )
            deliverer = Deliverer(
                daemon.redis,
                daemon.keys,
                lambda: daemon.config.webhooks,
                daemon.leading,
                daemon.metrics,
            )
            stack.push_async_callback(
                _cancel, asyncio.create_task(deliverer.run(), name="webhooks")
            )
            server = _status_server(daemon, activator, deliverer, config.status.bind)
            await stack.enter_async_context(server)
        except OSError as exc:  # the port is taken, or the address is not this machine's
            log.error(
                "cannot listen (activator.bind %s, status.bind %s): %s",
                config.activator.bind,
                config.status.bind,
                exc,
            )
            return 2
        log.info(
            "autoscaler %s: runtime %s, %d-%d shards, status on http://%s/%s",
            daemon.holder,
            config.runtime.kind,
            config.policy.min_shards,
            config.policy.max_shards,
            config.status.bind,
            " (dry run)" if config.policy.dry_run else "",
        )
        scheduler = AsyncIOScheduler(timezone=UTC)
        nudge = Nudger(scheduler)
        schedule_jobs(scheduler, daemon, nudge)
        daemon.on_reload = lambda: _reloaded(scheduler, daemon, nudge)
        scheduler.start()
        stack.callback(scheduler.shutdown, wait=False)
        # A shard that became full (or just started) publishes on the nudge channel.
        nudges = listen(config.redis.url, daemon.keys.nudge, lambda _shard: nudge())
        for job, name in ((nudges, "nudges"), (daemon.renew_forever(), "leader renewal")):
            stack.push_async_callback(_cancel, asyncio.create_task(job, name=name))
        await _until_stopped(daemon, nudge)
        log.info("stopping (shards keep running)")
    log.info("stopped")
    return 0


def _reloaded(scheduler: AsyncIOScheduler, daemon: Daemon, nudge: Nudger) -> None:
    """A new config: new schedules, and its keys published (in the background)."""
    schedule_jobs(scheduler, daemon, nudge)
    task = asyncio.get_running_loop().create_task(_publish_keys(daemon), name="publish keys")
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


async def _publish_keys(daemon: Daemon) -> None:
    """The config's keys into Redis, retried until Redis answers (shards refuse every key
    until then: they fail closed)."""
    while True:
        try:
            await auth.publish(daemon.redis, daemon.keys, daemon.config)
            return
        except RedisError as exc:
            log.warning("cannot publish the API keys yet: %s", exc)
            await asyncio.sleep(2)


@contextlib.asynccontextmanager
async def _status_server(
    daemon: Daemon, activator: Activator | None, deliverer: Deliverer, bind: str
) -> AsyncIterator[None]:
    host, _, port = bind.rpartition(":")
    runner = web.AppRunner(init_app(daemon, activator, deliverer), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        yield
    finally:
        await runner.cleanup()


async def _until_stopped(daemon: Daemon, nudge: Nudger) -> None:
    """Wait for SIGTERM or SIGINT; SIGHUP reloads the config and runs a pass."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_hup() -> None:
        daemon.request_reload()
        nudge()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a background job and wait for it, but never forever: a stop must end."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(task), CANCEL_WAIT)
    if not task.done():
        log.error(
            "%s did not stop within %g s after being cancelled; leaving it", task, CANCEL_WAIT
        )


async def down(config: Config) -> int:
    """Stop every shard of the project, each handing its sessions off first. Prints progress.

    Sessions stay in Redis, released, and are adopted again by the next fleet.
    """
    from autoscaler.runtimes import make_runtime

    runtime = make_runtime(config)
    shards = await runtime.list_shards()
    print(f"stopping {len(shards)} shard(s) of project {config.runtime.project!r}", flush=True)
    for instance in shards:
        await runtime.stop(instance.shard_id, config.shard.stop_timeout)
        print(f"  stopped {instance.shard_id}", flush=True)
    return 0


async def front_agent(config: Config) -> int:
    """`autoscaler front-agent`: keep the nginx beside this process serving the published
    config, until SIGTERM or SIGINT; then let nginx finish its requests and stop it."""
    identity = AgentIdentity(
        front_id=os.environ.get("FRONT_ID") or socket.gethostname(),
        node=os.environ.get("NODE_NAME") or socket.gethostname(),
    )
    client = connect(config.redis.url, socket_timeout=5, socket_connect_timeout=5)
    keys = Keys(config.redis.key_prefix)
    agent = FrontAgent(config.nginx, identity, LocalReloader(config.nginx), client, keys, SYSTEM)
    wake = asyncio.Event()
    log.info(
        "front agent %s on %s: nginx on port %d",
        identity.front_id,
        identity.node,
        config.nginx.listen,
    )
    nudges = listen(config.redis.url, keys.front_nudge, lambda _generation: wake.set())
    tasks = [
        asyncio.create_task(agent.run(wake), name="front agent"),
        asyncio.create_task(nudges, name="nudges"),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: nginx finishes the requests in flight")
    # The agent first, so it neither reports again after the withdrawal nor starts nginx again
    # once nginx has gracefully exited.
    for task in tasks:
        await _cancel(task)
    with contextlib.suppress(RedisError, OSError):
        await agent.withdraw()
    await agent.stop_nginx()
    await client.aclose()
    return 0
