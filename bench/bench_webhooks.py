"""Benchmark: session events to a webhook receiver, through the outbox and the deliverer, next to
a bare aiohttp POST loop to the same receiver.

Real Redis, the registry's own status script (as shards write statuses), the autoscaler's
Deliverer, and a receiver in a process of its own (this file with --receiver) that notes when
each event arrived. All on loopback; everything is stopped on exit.

1. Throughput: N events already in the outbox (N/10 sessions x 10 status changes), drained by
   the deliverer; bare: the same N bodies POSTed by 16 workers (the deliverer's 16 lanes).
2. Latency, write -> receiver, at a steady rate: a producer writes statuses at R per second;
   bare: the producer POSTs each event itself right after writing it.
3. From the page: real shard, real Chromium, the stand-in site: the scan of a QR code -> its
   WORKING event at the receiver (includes the shard's page polling, every 1 s, and the snapshot
   a login gets before it is reported WORKING).
4. Incoming messages: the stand-in site takes a contact's message for a logged-in session ->
   its `message` event at the receiver. Includes the stand-in page's own poll for news (every
   300 ms, where WhatsApp Web has a socket: about 150 ms on average), then the page's observer,
   the shard's script, the deliverer.

Run:  .venv/bin/python bench/bench_webhooks.py [--events 5000] [--rate 100] [--logins 5]
      [--messages 40]
Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from shard.registry import Registry
from support.procs import free_port, port_open, start, start_redis, stop, wait_for
from support.receiver import delivering
from support.shards import Api, ShardFleet, scan

from autoscaler.webhooks.deliver import LANES
from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import Event, Webhook, headers

ROOT = Path(__file__).resolve().parents[1]
KEYS = Keys("cs:")
STATUSES = ("STARTING", "SCAN_QR_CODE", "WORKING", "FAILED", "STOPPED")


# --- the receiver (its own process) -------------------------------------------------------------


def receiver_main(port: int) -> None:
    # (arrived, event timestamp ms, session, event, the message id for message events)
    arrivals: list[tuple[float, int, str, str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        message = str(event["payload"].get("id", ""))
        kind = event["event"]
        arrivals.append((time.time(), event["timestamp"], event["session"], kind, message))
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def reset(request: web.Request) -> web.Response:
        arrivals.clear()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- helpers ------------------------------------------------------------------------------------


async def arrivals(http: aiohttp.ClientSession, base: str) -> list[list[Any]]:
    async with http.get(f"{base}/stats") as resp:
        return list(await resp.json())


async def reset(http: aiohttp.ClientSession, base: str) -> None:
    async with http.post(f"{base}/reset") as resp:
        assert resp.status == 204


async def owned_sessions(client: aioredis.Redis, count: int, prefix: str) -> Registry:
    registry = Registry(client, KEYS, "shard-bench", capacity=1 << 30)
    await client.set(KEYS.shard("shard-bench"), "alive")  # a live owner for the claims
    for n in range(count):
        await registry.claim(f"{prefix}{n}")
    return registry


async def write_status(registry: Registry, sid: str, token: int, n: int) -> None:
    assert await registry.update(sid, token, {"status": STATUSES[n % len(STATUSES)]})


async def wait_count(http: aiohttp.ClientSession, base: str, count: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        got = await arrivals(http, base)
        if len(got) >= count:
            return float(max(a[0] for a in got))
        assert time.monotonic() < deadline, f"only {len(got)} of {count} events arrived"
        await asyncio.sleep(0.05)


# --- 1. throughput ------------------------------------------------------------------------------


async def throughput(
    client: aioredis.Redis, http: aiohttp.ClientSession, base: str, hook: Webhook, events: int
) -> dict[str, float]:
    await client.flushdb()
    sessions = events // 10
    registry = await owned_sessions(client, sessions, "t")
    for n in range(10):  # round by round: every session's changes in order
        for s in range(sessions):
            await write_status(registry, f"t{s}", 1, n)
    queued = await client.xrange(KEYS.outbox)
    assert len(queued) == events, len(queued)
    await reset(http, base)
    began = time.time()
    async with delivering(client, [hook]):
        done = await wait_count(http, base, events, 300)
    through = events / (done - began)

    await reset(http, base)
    bodies = [Event.parse(i, f) for i, f in queued]
    work: asyncio.Queue[Event] = asyncio.Queue()
    for event in bodies:
        work.put_nowait(event)

    async def worker() -> None:
        while not work.empty():
            event = work.get_nowait()
            body = event.body()
            async with http.post(hook.url, data=body, headers=headers(hook, event, body)) as r:
                assert r.status < 300

    began = time.time()
    await asyncio.gather(*(worker() for _ in range(LANES)))
    done = await wait_count(http, base, events, 60)
    bare = events / (done - began)
    return {"through": through, "bare": bare}


# --- 2. latency at a steady rate ----------------------------------------------------------------


async def latency(
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
    base: str,
    hook: Webhook,
    rate: float,
    seconds: float,
) -> dict[str, list[float]]:
    await client.flushdb()
    count = int(rate * seconds)
    registry = await owned_sessions(client, 50, "l")
    await reset(http, base)
    async with delivering(client, [hook]):
        await steady(registry, count, rate, None)
        got = await _settled(http, base, count)
    through = [a[0] - a[1] / 1000 for a in got]

    await client.flushdb()
    registry = await owned_sessions(client, 50, "l")
    await reset(http, base)

    async def post_it(n: int, wrote: float) -> None:
        # The event as the deliverer would send it, stamped with the time of its write.
        stream_id = f"{int(wrote * 1000)}-{n}"
        event = Event(stream_id, "session.status", f"l{n % 50}", {"status": "WORKING"}, {})
        body = event.body()
        async with http.post(hook.url, data=body, headers=headers(hook, event, body)) as r:
            assert r.status < 300

    await steady(registry, count, rate, post_it)
    got = await _settled(http, base, count)
    bare = [a[0] - a[1] / 1000 for a in got]
    return {"through": through, "bare": bare}


async def steady(registry: Registry, count: int, rate: float, after: Any) -> None:
    began = time.monotonic()
    tasks = []
    for n in range(count):
        await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
        await write_status(registry, f"l{n % 50}", 1, n // 50 + 1)
        if after is not None:
            tasks.append(asyncio.create_task(after(n, time.time())))
    await asyncio.gather(*tasks)


async def _settled(http: aiohttp.ClientSession, base: str, count: int) -> list[list[Any]]:
    await wait_count(http, base, count, 120)
    return await arrivals(http, base)


# --- 3. from the page ---------------------------------------------------------------------------


async def from_the_page(
    redis_url: str,
    http: aiohttp.ClientSession,
    base: str,
    hook: Webhook,
    args: argparse.Namespace,
    folder: Path,
) -> tuple[list[float], list[float]]:
    """Seconds from each scan to its WORKING event, and from each incoming message (accepted
    by the site) to its `message` event."""
    site_port = free_port()
    site_url = f"http://127.0.0.1:{site_port}"
    site = start(
        [sys.executable, "-m", "fakesite", "--port", str(site_port), "--qr-rotate-seconds", "120"],
        folder / "fakesite.log",
        {"PYTHONPATH": str(ROOT / "tests")},
    )
    fleet = ShardFleet(redis_url, site_url, folder)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    logins: list[float] = []
    messages: list[float] = []
    every = hook.model_copy(update={"events": ["*"]})
    try:
        wait_for(lambda: port_open(site_port), 15, "the stand-in site")
        api = Api(http, fleet.start("shard-1").url)
        await reset(http, base)
        async with delivering(client, [every]):
            for n in range(args.logins):
                sid = f"page{n}"
                code, body, _ = await api.call("PUT", f"/api/sessions/{sid}", {})
                assert code == 201, body
                await api.wait_status(sid, "SCAN_QR_CODE")
                _, qr, _ = await api.call("GET", f"/api/sessions/{sid}/qr?format=raw")
                scanned = time.time()
                await scan(http, site_url, qr["qr"], f"49151000000{n:02d}")
                logins.append(await _working_arrived(http, base, sid) - scanned)
            for n in range(args.messages):
                body = {"to": "4915100000000", "from": "4915199999999", "text": f"m{n}"}
                async with http.post(f"{site_url}/api/incoming", json=body) as resp:
                    accepted, message = time.time(), await resp.json()
                messages.append(await _message_arrived(http, base, message["id"]) - accepted)
                await asyncio.sleep(0.1)
    finally:
        fleet.stop_all()
        stop(site)
        await client.aclose()
    return logins, messages


async def _message_arrived(http: aiohttp.ClientSession, base: str, message_id: str) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for arrived, _, _, event, seen in await arrivals(http, base):
            if event == "message" and seen == message_id:
                return float(arrived)
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no message event for {message_id}")


async def _working_arrived(http: aiohttp.ClientSession, base: str, sid: str) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(f"{base}/stats") as resp:
            got = await resp.json()
        # WORKING is the third event of a fresh session (STARTING, SCAN_QR_CODE, WORKING).
        mine = [a for a in got if a[2] == sid and a[3] == "session.status"]
        if len(mine) >= 3:
            return float(mine[2][0])
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{sid}: no WORKING event")


# --- report -------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def main_async(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    redis_proc, redis_base = start_redis(folder)
    port = free_port()
    receiver = start([sys.executable, __file__, "--receiver", str(port)], folder / "receiver.log")
    base = f"http://127.0.0.1:{port}"
    hook = Webhook.model_validate({"url": f"{base}/hook", "hmac": {"key": "bench"}})
    client = aioredis.Redis.from_url(f"{redis_base}/0", decode_responses=True)
    try:
        wait_for(lambda: port_open(port), 15, "the receiver")
        async with aiohttp.ClientSession() as http:
            tp = await throughput(client, http, base, hook, args.events)
            lat = await latency(client, http, base, hook, args.rate, args.seconds)
            page = await from_the_page(f"{redis_base}/0", http, base, hook, args, folder)
    finally:
        await client.aclose()
        stop(receiver)
        stop(redis_proc)
    print_report(args, tp, lat, page)


def print_report(
    args: argparse.Namespace,
    tp: dict[str, float],
    lat: dict[str, list[float]],
    page: tuple[list[float], list[float]],
) -> None:
    logins, messages = page
    print(
        f"command: `.venv/bin/python bench/bench_webhooks.py` (events {args.events}, rate "
        f"{args.rate:g}/s for {args.seconds:g} s, {args.logins} logins, {args.messages} "
        "messages)  "
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}\n")
    print("| measure | through the outbox | bare POST loop | ratio |")
    print("|---|---|---|---|")
    ratio = tp["through"] / tp["bare"]
    print(
        f"| throughput, {args.events} events | {tp['through']:.0f} events/s "
        f"| {tp['bare']:.0f} events/s | {ratio:.2f}x |"
    )
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        a, b = pct(lat["through"], q) * 1000, pct(lat["bare"], q) * 1000
        print(
            f"| latency write -> receiver {name}, {args.rate:g}/s | {a:.1f} ms | {b:.1f} ms "
            f"| {a / b:.1f}x |"
        )
    print(
        f"| scan -> WORKING event at the receiver (median of {len(logins)}) "
        f"| {statistics.median(logins):.2f} s (max {max(logins):.2f} s) | - | - |"
    )
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        print(
            f"| incoming message -> `message` event at the receiver, {name} of {len(messages)} "
            f"| {pct(messages, q) * 1000:.0f} ms | - | - |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--logins", type=int, default=5)
    parser.add_argument("--messages", type=int, default=40)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
