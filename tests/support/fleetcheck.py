"""What the multi-node and stack tests check while a fleet changes under them: every session
WORKING on a live shard that owns it, and a client that reads through a front all along."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from support.scenario import API_KEY, KEYS, SESSIONS, Scenario


async def tokens_now(scenario: Scenario) -> dict[str, int]:
    return {
        sid: int(await scenario.redis.hget(KEYS.session(sid), "token") or 0) for sid in SESSIONS
    }


async def all_live(
    scenario: Scenario, lost: set[str], moved: set[str], tokens: dict[str, int], timeout: float
) -> None:
    """Every session WORKING, answered by its owner, a ready shard on a node not in `lost`;
    and each of `moved` restored since (its fencing token grew). The registry alone would say
    WORKING for a session whose shard died: it is the answering shard that must own it."""

    async def live() -> bool:
        shards = (await scenario.status())["shards"]
        ready = {s["id"]: s["node"] for s in shards if s["state"] == "ready"}
        for sid in SESSIONS:
            code, view, shard = await scenario.call("GET", f"/api/sessions/{sid}")
            owner = await scenario.redis.hget(KEYS.session(sid), "owner")
            if code != 200 or view.get("status") != "WORKING" or shard != owner:
                return False
            if owner not in ready or ready[owner] in lost:
                return False
            if sid in moved and int(view.get("token", 0)) <= tokens[sid]:
                return False
        return True

    await scenario.until(live, timeout, "every session WORKING on a live shard")


async def read_all_until_cancelled(
    scenario: Scenario, http: aiohttp.ClientSession, failures: list[str]
) -> None:
    """A client reading every session through the manager's front, as an application would:
    a 503 with Retry-After is waited out and asked again; anything else unexpected fails."""
    while True:
        for sid in SESSIONS:
            error = await read_one(http, f"{scenario.s.front}/api/sessions/{sid}")
            if error:
                failures.append(f"{sid}: {error}")
        await asyncio.sleep(0.2)


async def read_one(http: aiohttp.ClientSession, url: str, patience: float = 60) -> str:
    deadline = time.monotonic() + patience
    last = ""
    while time.monotonic() < deadline:
        try:
            async with http.get(url, headers=headers()) as resp:
                body: Any = await resp.json(content_type=None)
                if resp.status == 200:
                    return ""
                last = f"{resp.status} {body}"
                if resp.status != 503 or "Retry-After" not in resp.headers:
                    return last
                await asyncio.sleep(float(resp.headers["Retry-After"]))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return f"still failing after {patience:g} s: {last}"


def headers() -> dict[str, str]:
    return {"X-Api-Key": API_KEY}
