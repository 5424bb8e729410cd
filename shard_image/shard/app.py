"""`init_app(settings) -> web.Application`: the shard service with its resources.

Resources open in one cleanup context and close in reverse order: Redis, the HTTP client for
forwarding, the browser, then the background heartbeat and page-memory check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from chatscale_contract.keys import Keys
from shard.api import api_key, bad_requests, routes, shard_header
from shard.browser import BrowserHost
from shard.catalog import Catalog
from shard.egress import Guard, Policy
from shard.errors import errors_as_json
from shard.handoff import rerun_moved
from shard.keyadmin import routes as key_routes
from shard.pagememory import PageMemoryGuard
from shard.redisconn import connect
from shard.registry import Registry
from shard.settings import ShardSettings
from shard.state import SHARD, Shard
from shard.waha.errors import waha_errors
from shard.waha.live import HUB, Hub
from shard.waha.routes import routes as waha_routes

log = logging.getLogger(__name__)
MAX_BODY = 1024 * 1024
"""Largest request body the shard reads; bigger ones get 413 with a JSON body."""
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=150, connect=5)
REDIS_TIMEOUT = 5.0


def init_app(settings: ShardSettings) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            shard_header,
            waha_errors,
            errors_as_json,
            bad_requests,
            api_key,
            rerun_moved(lambda: settings.handoff_wait),  # innermost: reruns only the handler
        ],
    )
    app["max_body"] = MAX_BODY
    app.add_routes(routes())
    app.add_routes(key_routes())
    app.add_routes(waha_routes())
    app.cleanup_ctx.append(_resources(settings))
    return app


def _resources(
    settings: ShardSettings,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        # Timeouts: a Redis that stops answering must fail calls, not hang them (the lease
        # check runs after each heartbeat attempt).
        client = connect(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        registry = Registry(
            client, Keys(settings.key_prefix), settings.shard_id, settings.max_sessions
        )
        http = aiohttp.ClientSession(timeout=FORWARD_TIMEOUT)
        guard = Guard(Policy.of(settings.egress_allow, settings.whatsapp_url))
        await guard.start()
        if not settings.egress_guard:
            log.warning("EGRESS_GUARD=0: the browsers may reach any address, this network's too")
        proxy = guard.address if settings.egress_guard else None
        browser = BrowserHost(settings.browser_executable, settings.headless, proxy=proxy)
        shard = Shard(settings, registry, browser, http)
        browser.on_crash = shard.manager.reopen_all
        app[SHARD] = shard
        app[HUB] = Hub(client, registry.keys)
        await browser.start()
        await shard.beat_once()
        with contextlib.suppress(RedisError):  # the next shard to start tries again
            if added := await Catalog(client, registry.keys).backfill():
                log.info("added %d older sessions to the fleet-wide list", added)
        # A new shard asks for a reconcile pass at once, so it joins the ring (and nginx) now
        # rather than at the next interval.
        with contextlib.suppress(RedisError):
            await registry.nudge()
        heartbeat = asyncio.create_task(shard.heartbeat_forever(), name="heartbeat")
        pages = asyncio.create_task(PageMemoryGuard(shard.manager).run_forever(), name="pages")
        log.info("shard %s serving on %s", settings.shard_id, settings.public_addr)
        try:
            yield
        finally:
            for task in (pages, heartbeat):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await app[HUB].close()
            await shard.manager.close_all()
            await browser.stop()
            await guard.stop()
            await http.close()
            await client.aclose()

    return resources
