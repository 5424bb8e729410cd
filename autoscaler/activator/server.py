"""The activator's HTTP side: its server, passing requests to shards, its registration.

Every autoscaler (leader or standby) runs one. It registers its address in Redis every
hops.ACTIVATOR_REFRESH seconds; the leader renders the live ones into nginx.conf as the upstream
for requests no shard can take, and shards hand it creates they have no room for. Any path is
accepted: a held request is passed on exactly as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from autoscaler.activator.gate import Gate
from autoscaler.activator.hold import Activator, Answer, Held, Record, Unreachable
from autoscaler.activator.watch import FleetWatch
from autoscaler.metrics import Metrics
from chatscale_contract.beat import Beat
from chatscale_contract.clock import Clock
from chatscale_contract.config import Config, parse_size
from chatscale_contract.hops import (
    ACTIVATOR_REFRESH,
    PASS_BACK,
    WAKE,
    passed_headers,
    routed_session_id,
)
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)
BY = "activator"
"""The X-Chatscale-Forwarded-By value of requests an activator passes on."""


class Sender:
    """Passes held requests to shards over one pooled HTTP client."""

    def __init__(self, read_timeout: float):
        timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_read=read_timeout)
        self.http = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def __call__(self, target: Beat, request: Held) -> Answer:
        url = f"http://{target.addr}{request.path}"
        headers = passed_headers(request.headers, BY)
        try:
            async with self.http.request(
                request.method, url, headers=headers, data=request.body, allow_redirects=False
            ) as resp:
                body = await resp.read()
                passed = {h: resp.headers[h] for h in PASS_BACK if h in resp.headers}
                return Answer(resp.status, body, passed)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Not connected, so nothing was sent: safe to try again on the next reading (a
            # shard whose task moves keeps its name while its old address times out).
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Sent, maybe acted on: not safe to send again elsewhere.
            return Answer.error(502, f"{target.id} did not answer: {exc or type(exc).__name__}")

    async def close(self) -> None:
        await self.http.close()


def recorder(client: aioredis.Redis, keys: Keys, clock: Clock, me: str) -> Record:
    """Records a held request's demand where the autoscaler counts it, and nudges it to run a
    pass now (a shard starts at once instead of at the next interval)."""

    async def record(sid: str) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.pending, {sid or WAKE: clock.time()})
            pipe.publish(keys.nudge, me)
            await pipe.execute()

    return record


def advertised(config: Config) -> str:
    """host:port the fronts and shards reach this activator at (activator.advertise)."""
    settings = config.activator
    if settings.advertise:
        return settings.advertise
    host, _, port = settings.bind.rpartition(":")
    if host not in ("0.0.0.0", "::", "[::]", ""):
        return settings.bind
    return f"{_route_address(config.redis.url)}:{port}"


def _route_address(redis_url: str) -> str:
    """This machine's address on the way to Redis: the network the fronts and shards share
    with it (a container's address on the compose or overlay network, 127.0.0.1 locally)."""
    target = urlsplit(redis_url).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 6379))  # UDP: no packet is sent, only a route is chosen
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def app(activator: Activator, max_body: int, gate: Gate | None = None) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if gate is not None and not await gate.admits(_key_of(request, body)):
            refused = {"error": "missing or wrong X-Api-Key", "status": 401}
            return web.json_response(refused, status=401)
        sid = routed_session_id(request.path, request.headers, request.query)
        held = Held(request.method, request.path_qs, dict(request.headers), body, sid)
        answer = await activator.hold(held)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    application = web.Application(client_max_size=max_body)
    application.router.add_route("*", "/{tail:.*}", handle)
    return application


def _key_of(request: web.Request, body: bytes) -> str:
    """X-Api-Key; on the WAHA surface ?x-api-key=; in the older create form, `api_key`."""
    given = request.headers.get("X-Api-Key") or request.query.get("x-api-key", "")
    if not given and request.method == "POST" and request.path == "/api/sessions":
        with contextlib.suppress(ValueError, AttributeError):
            given = str(json.loads(body).get("api_key", ""))
    return given


@contextlib.asynccontextmanager
async def running(
    config: Config, client: aioredis.Redis, metrics: Metrics, clock: Clock
) -> AsyncIterator[Activator]:
    """Serve the activator on activator.bind and keep it registered until the block ends."""
    keys = Keys(config.redis.key_prefix)
    me = advertised(config)
    watch = FleetWatch(client, keys)
    sender = Sender(config.nginx.read_timeout)
    activator = Activator(
        config.activator, watch, sender, recorder(client, keys, clock, me), metrics, clock
    )
    # On the way out, held requests get a moment; nginx answers the rest 503 + Retry-After.
    gate = Gate(client, keys, config.shard.env.get("API_KEY", ""))
    application = app(activator, parse_size(config.nginx.client_max_body_size), gate)
    runner = web.AppRunner(application, access_log=None, shutdown_timeout=5)
    await runner.setup()
    host, _, port = config.activator.bind.rpartition(":")
    registration = None
    try:
        await web.TCPSite(runner, host, int(port)).start()
        await _register_once(client, keys, me, clock)  # known at once, not a refresh later
        registration = asyncio.create_task(_register(client, keys, me, clock), name="activator")
        log.info("activator on %s, reached at %s", config.activator.bind, me)
        yield activator
    finally:
        if registration is not None:
            registration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registration
        with contextlib.suppress(RedisError, OSError):
            await client.zrem(keys.activators, me)
        await runner.cleanup()
        await watch.close()
        await sender.close()


async def _register(client: aioredis.Redis, keys: Keys, me: str, clock: Clock) -> None:
    while True:
        await asyncio.sleep(ACTIVATOR_REFRESH)
        await _register_once(client, keys, me, clock)


async def _register_once(client: aioredis.Redis, keys: Keys, me: str, clock: Clock) -> None:
    try:
        await client.zadd(keys.activators, {me: clock.time()})
    except (RedisError, OSError) as exc:
        log.warning("activator cannot register in Redis: %s", exc)
