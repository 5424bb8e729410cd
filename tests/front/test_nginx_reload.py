"""Fleet changes through a real nginx: a joining shard moves no running session, and reloads
under load lose or misroute no request."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping

import aiohttp
from support.frontkit import Front, Upstreams, routes, session_ids

from autoscaler.front.apply import confirm
from autoscaler.front.table import RouteTable, build_table

RELOADS = 50
CLIENTS = 16


async def test_joining_shard_pins_the_sessions_it_would_take(
    front: Front, upstreams: Upstreams
) -> None:
    before = upstreams.shards(4)
    sessions = session_ids(800, seed=5)
    ring = RouteTable(before).ring()
    owners = {sid: str(ring.owner(sid)) for sid in sessions}  # each placed on its ring owner
    first = build_table(before, owners)
    assert first.exceptions == {}
    await front.serve(first)

    second = build_table(upstreams.shards(5), owners)
    new_ring = second.ring()
    moved = {sid for sid in sessions if new_ring.owner(sid) != owners[sid]}
    # Consistent hashing: the new shard takes a share, nothing else moves; that share is pinned.
    assert 50 < len(moved) < 400
    assert {new_ring.owner(sid) for sid in moved} == {"shard-5"}
    assert set(second.exceptions) == moved
    await front.serve(second)

    assert await routes(front, sessions) == owners
    newcomers = [s for s in session_ids(1000, seed=6) if s not in owners]
    to_new = [s for s in newcomers if new_ring.owner(s) == "shard-5"]
    assert len(to_new) > 50
    assert await routes(front, to_new) == dict.fromkeys(to_new, "shard-5")


def same_routes_tables(upstreams: Upstreams, owners: Mapping[str, str]) -> list[RouteTable]:
    """Three different configs that send every session in `owners` to the same shard."""
    four = build_table(upstreams.shards(4), owners)
    six = build_table(upstreams.shards(6), owners)  # two more shards, moved sessions pinned
    ring = four.ring()
    at_home = [sid for sid in sorted(owners) if ring.owner(sid) == owners[sid]][:100]
    redundant = {**four.exceptions, **{sid: owners[sid] for sid in at_home}}
    return [four, six, RouteTable(four.shards, redundant)]


async def hammer(
    front: Front,
    owners: Mapping[str, str],
    stop: asyncio.Event,
    tally: Counter[str],
    method: str = "GET",
) -> None:
    """One client: random sessions through the front until `stop`, tallying every outcome.

    GETs reuse kept-alive connections (aiohttp retries an idempotent request once when an old
    nginx worker closes an idle connection under it, as RFC 9112 allows). POSTs cannot be
    retried that way, so those clients open a connection per request, which never fails.
    """
    rng = random.Random()
    sessions = sorted(owners)
    connector = aiohttp.TCPConnector(force_close=method != "GET")
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            sid = rng.choice(sessions)
            url = f"{front.url}/api/sessions/{sid}/status"
            body = b"{}" if method == "POST" else None
            try:
                async with http.request(method, url, data=body) as resp:
                    await resp.read()
                    shard = resp.headers.get("X-Shard-Id")
                    ok = resp.status == 200 and shard == owners[sid]
                    tally["ok" if ok else f"{method} {resp.status} from {shard}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally[f"{method} error {type(exc).__name__}: {exc}"] += 1


async def test_reloads_under_load_fail_and_misroute_nothing(
    front: Front, upstreams: Upstreams
) -> None:
    sessions = session_ids(600, seed=7)
    ring = RouteTable(upstreams.shards(4)).ring()
    owners = {sid: str(ring.owner(sid)) for sid in sessions}
    for i, sid in enumerate(sessions[:60]):  # some sessions live off their ring owner
        owners[sid] = f"shard-{i % 4 + 1}"
    tables = same_routes_tables(upstreams, owners)
    assert len({t.version for t in tables}) == 3
    await front.serve(tables[0])

    stop, tally = asyncio.Event(), Counter[str]()
    methods = ["GET"] * (CLIENTS - 4) + ["POST"] * 4
    clients = [asyncio.create_task(hammer(front, owners, stop, tally, m)) for m in methods]
    started = time.monotonic()
    for i in range(1, RELOADS + 1):
        table = tables[i % len(tables)]
        result = await front.applier.apply(front.render(table))
        assert result.changed and result.reloaded and result.ok, result.error
        await asyncio.sleep(0.05)
    assert await confirm(front.url, tables[RELOADS % len(tables)].version, within=10)
    stop.set()
    await asyncio.gather(*clients)
    elapsed = time.monotonic() - started

    failures = {outcome: n for outcome, n in tally.items() if outcome != "ok"}
    assert not failures, f"{sum(failures.values())} bad of {sum(tally.values())}: {failures}"
    assert tally["ok"] > 500, f"only {tally['ok']} requests in {elapsed:.1f} s"
