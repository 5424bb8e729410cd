"""Recycling shards end to end without Docker: the whole system (autoscaler, front agent and
nginx, local shards with real Chromium) with `policy.recycle`'s memory and age bounds.

Memory: the stand-in site makes one logged-in page allocate 1.2 GB (fakesite POST /api/grow,
once); the shard holding it reports that much more than its baseline in its heartbeat (local
shards: the PSS of the shard's process tree, browser included); the autoscaler starts an extra
shard (recycle.max_surge), drains the grown one once the extra one is ready, and its sessions
move from their snapshots: no new scan, every other shard left alone. Age: every shard older than
max_age is replaced the same way, one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from support.chaos import RECIPIENT
from support.localsystem import LocalSystem, local_system
from support.procs import wait_for
from support.scenario import API_KEY
from support.shards import Api, log_in, site_state

from autoscaler.runtimes.local import shard_roots

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(420)]
PROJECT = "recycle"
BOUND_MIB = 400
"""max_growth_per_session: over twice what a shard's only logged-in stand-in page adds (120-180
MiB measured: the page's own renderer process; the 50th page of a shard adds about 40)."""
GROWTH_MB = 1200
AGE = 30
"""max_age, seconds: both shards are due about half a minute in."""
SESSIONS = {"grow-a": "4915100000141", "grow-b": "4915100000142"}
"""Phones no other test logs in: the stand-in grows every page of an account."""


async def test_a_shard_whose_memory_grew_is_replaced_without_a_scan(
    tmp_path: Path, redis_url: str, site_url: str
) -> None:
    recycle = {"max_growth_per_session": BOUND_MIB}
    with _system(tmp_path, redis_url, site_url, recycle) as system:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            api = await _logged_in(system, http, site_url)
            scans = len((await site_state(http, site_url))["sessions"])
            grown = (await api.call("GET", "/api/sessions/grow-a"))[1]["shard"]
            pids = {s: p.pid for s, p in shard_roots(PROJECT).items()}
            others = {s: pid for s, pid in pids.items() if s != grown}
            assert _drains(system) == [], "nothing is due before the page grows"

            async with http.post(
                f"{site_url}/api/grow", json={"phone": SESSIONS["grow-a"], "mb": GROWTH_MB}
            ) as resp:
                assert resp.status == 200, await resp.text()

            def replaced() -> bool:
                roots = shard_roots(PROJECT)
                return grown not in roots or roots[grown].pid != pids[grown]

            wait_for(replaced, 240, f"{grown}, grown {GROWTH_MB} MB, replaced", interval=1)
            for sid in SESSIONS:
                view = await api.wait_status(sid, "WORKING", timeout=120)
                assert view["shard"] in shard_roots(PROJECT), view
            assert len((await site_state(http, site_url))["sessions"]) == scans, "a new scan"
            code, sent, _ = await api.call(
                "POST", "/api/sessions/grow-a/messages", {"to": RECIPIENT, "text": "after"}
            )
            assert code == 201, sent
        now = {s: p.pid for s, p in shard_roots(PROJECT).items()}
        assert {s: now.get(s) for s in others} == others, "only the grown shard was replaced"
        drains = _drains(system)
        assert [d["shard"] for d in drains] == [grown], drains
        assert "max_growth_per_session" in drains[0]["reason"], drains


async def test_shards_past_max_age_are_replaced_one_at_a_time_without_a_scan(
    tmp_path: Path, redis_url: str, site_url: str
) -> None:
    """recycle.max_age: both shards, once older than it, are replaced one after the other (an
    extra shard first, then a drain), their sessions restored from snapshots, none rescanned."""
    with _system(tmp_path, redis_url, site_url, {"max_age": AGE}) as system:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            api = await _logged_in(system, http, site_url)
            scans = len((await site_state(http, site_url))["sessions"])
            pids = {p.pid for p in shard_roots(PROJECT).values()}

            def renewed() -> bool:
                now = {p.pid for p in shard_roots(PROJECT).values()}
                return not now & pids and _ready(system) >= 2

            wait_for(renewed, 240, f"both shards replaced after {AGE} s", interval=0.5)
            for sid in SESSIONS:
                view = await api.wait_status(sid, "WORKING", timeout=120)
                assert view["shard"] in shard_roots(PROJECT), view
            assert len((await site_state(http, site_url))["sessions"]) == scans, "a new scan"
        drains = _drains(system)
        assert len({d["shard"] for d in drains}) >= 2, drains
        assert all("max_age" in d["reason"] for d in drains), drains
        assert system.most_draining_at_once() == 1, "one shard recycled at a time (max_at_once 1)"


@contextlib.contextmanager
def _system(
    folder: Path, redis_url: str, site_url: str, recycle: Mapping[str, float]
) -> Iterator[LocalSystem]:
    """Two shards of 3 sessions (at most 3 shards), one reconcile pass a second."""
    policy = {
        "min_shards": 2,
        "max_shards": 3,
        "buffer": {"slots": 0, "percent": 0},
        "scale_down": {"stabilization": 600, "max_step": 1},
        "recycle": recycle,
    }
    sections = {"policy": policy, "shard": {"max_sessions": 3}}
    with local_system(folder, redis_url, site_url, PROJECT, **sections) as system:
        wait_for(lambda: _ready(system) == 2, 90, "two shards ready")
        yield system


async def _logged_in(system: LocalSystem, http: aiohttp.ClientSession, site: str) -> Api:
    api = Api(http, system.front, API_KEY)
    for sid, phone in SESSIONS.items():
        await log_in(api, http, site, sid, phone)
    return api


def _ready(system: LocalSystem) -> int:
    return sum(1 for s in system.status()["shards"] if s["state"] == "ready")


def _drains(system: LocalSystem) -> list[dict[str, str]]:
    return [e for e in system.status()["events"] if e["kind"] == "drain"]
