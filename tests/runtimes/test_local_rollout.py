"""A rolling update on the local runtime whose new shard settings never come up.

Real local processes, the heartbeat-only stand-in as the shard (see conftest.py): like a real
shard it exits before its first heartbeat when BROWSER_EXECUTABLE names no executable (a real
shard's Chromium launch fails and it exits 1), so what is tested is the control plane's answer
to a crash loop of the new shards. The same for a broken image on Docker:
test_docker_containers.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from support.harness import Harness, passes

from autoscaler.engine.schedules import VALIDATION
from autoscaler.loop.daemon import Daemon
from chatscale_contract.configload import load_config

OLD = ("shard-1", "shard-2")


@pytest.mark.parametrize("harness", ["local"], indirect=True)
async def test_new_shard_settings_that_never_come_up_hold_the_rollout(harness: Harness) -> None:
    """The operator changes the shard settings (config.yaml, read again at the next pass) to a
    browser path that does not exist: the extra shard started first (recycle.max_surge) exits
    again and again, so no old shard is drained. Over many passes both old processes keep
    running and serving their sessions, and the plan says the rollout waits for a new shard."""
    h = harness
    settings = h.config(min_shards=2, recycle={"outdated": True})
    path = h.write(settings)
    config = load_config(path, context=VALIDATION)
    assert config.policy.recycle.max_surge == 1, "the default is what is tested"
    async with Daemon(config, config_path=path) as daemon:
        await passes(daemon, lambda: h.beating(2), 40)
        assert h.create(["held-a", "held-b", "held-c"]) == []
        old = {s: h.identity(s) for s in OLD}
        settings["shard"]["env"] = {"BROWSER_EXECUTABLE": "/nonexistent/chromium"}
        h.write(settings)  # what an operator does
        reasons: set[str] = set()
        tried: set[str] = set()
        # Watched until the new shard was started again after it exited and the plan says the
        # rollout waits, and for 15 s at least: many passes that drain nothing.
        start = time.monotonic()
        seen = False
        while not seen or time.monotonic() < start + 15:
            assert time.monotonic() < start + 60, f"never waited: {sorted(reasons)}"
            decision = await daemon.reconcile()
            if decision is not None:
                reasons |= set(decision.plan.reasons)
            assert {s: h.identity(s) for s in OLD} == old, "an old shard was stopped"
            shards = daemon.state.observed.shards if daemon.state.observed else ()
            states = {v.id: v.state for v in shards}
            assert states["shard-1"] == states["shard-2"] == "ready", states
            assert all(v.outdated for v in shards if v.id in OLD), "the settings were read"
            fleet = daemon.state.fleet
            instances = fleet.instances.values() if fleet else ()
            # ("" when its environment could not be read: a process exiting as it is read)
            tried |= {i.config_hash for i in instances if i.shard_id not in OLD} - {""}
            seen = _waits(reasons) and len(await _new_starts(daemon)) >= 2
            await asyncio.sleep(0.3)
        events = await daemon.events.recent(500)
        fingerprint = daemon.config.fingerprint()
    assert h.owned("shard-1") + h.owned("shard-2") == 3, "the old shards keep their sessions"
    assert fingerprint != config.fingerprint()
    assert tried == {fingerprint}, "the new shard ran with the new settings"
    assert not [e for e in events if e.kind == "drain"], "no old shard drained"
    starts = [e for e in events if e.kind == "start" and e.shard not in OLD]
    assert len(starts) >= 2, "the new shard was started again after it exited"
    log = (h.folder / "shards" / f"{h.project}-{starts[0].shard}.log").read_text()
    assert "BROWSER_EXECUTABLE '/nonexistent/chromium' is not an executable" in log
    assert _waits(reasons), sorted(reasons)


def _waits(reasons: set[str]) -> bool:
    # (which old shard goes first depends on which is older: both are due)
    waits = [r for r in reasons if r.startswith("rollout: 1 extra shard(s) first")]
    return any(r.endswith("is drained once one is ready") for r in waits)


async def _new_starts(daemon: Daemon) -> list[str]:
    events = await daemon.events.recent(500)
    return [e.shard for e in events if e.kind == "start" and e.shard not in OLD]
