"""The reconcile loop end to end against real Redis, on a fake clock, with stand-in shards.

The shards here are control-plane stand-ins (tests/support/heartbeat_shard.py): they heartbeat,
claim and release sessions through the shard's own registry scripts and answer drain requests,
without a browser. Real shards are tested in tests/shard; real runtimes in tests/runtimes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from support.loop import Loop, make_config
from support.proxy import TcpProxy
from support.runtimes import StallingStarts, StopAudit

from autoscaler.engine.schedules import VALIDATION
from autoscaler.loop.events import Outcome
from chatscale_contract.configload import load_config


async def test_scale_up_under_load_and_down_after_the_window(loop: Loop) -> None:
    audit = StopAudit(loop.runtime, loop.owned)
    daemon = await loop.daemon(make_config(loop.redis_url), runtime=audit)
    await loop.converge(daemon, lambda: loop.beating(1), "min_shards 1")
    left = await loop.place([f"s{n}" for n in range(12)])
    assert len(left) == 7, "5 fit on shard-1; 7 are refused and count as demand"
    await loop.converge(daemon, lambda: loop.beating(3), "3 shards for 12 sessions + 1 buffer")
    assert loop.runtime.starts == ["shard-1", "shard-2", "shard-3"]
    assert await loop.place(left) == []

    for shard_id in loop.runtime.running():
        await loop.runtime.shard(shard_id).end_all()
    await loop.converge(daemon, lambda: loop.beating(1), "back to min_shards")
    assert audit.owned_at_stop == [0, 0], "only empty shards are stopped"


async def test_scale_down_waits_for_the_stabilization_window(loop: Loop) -> None:
    config = make_config(loop.redis_url, min_shards=3, scale_down={"stabilization": 60})
    daemon = await loop.daemon(config)
    await loop.converge(daemon, lambda: len(loop.runtime.running()) == 3)
    daemon.reconfigure(make_config(loop.redis_url, min_shards=1, scale_down={"stabilization": 60}))
    lowered_at = loop.clock.time()
    for _ in range(5):
        decision = await loop.step(daemon)
        assert decision.plan.actions == ()
    assert len(loop.runtime.running()) == 3
    assert any("history" in r or "held" in r for r in decision.plan.reasons)
    # ... and once the window has passed, the fleet does shrink.
    await loop.converge(daemon, lambda: len(loop.runtime.running()) == 1, passes=400)
    assert loop.clock.time() - lowered_at >= 60


async def test_busy_shards_are_drained_and_their_sessions_adopted(loop: Loop) -> None:
    config = make_config(loop.redis_url, min_shards=3, scale_down={"stabilization": 0.5})
    daemon = await loop.daemon(config)
    await loop.converge(daemon, lambda: loop.beating(3))
    for shard_id, sids in (("shard-1", "ab"), ("shard-2", "cd"), ("shard-3", "ef")):
        for sid in sids:
            assert await loop.runtime.shard(shard_id).create(sid)
    daemon.reconfigure(make_config(loop.redis_url, min_shards=1, scale_down={"stabilization": 0.5}))

    async def settled() -> bool:
        total = sum([await loop.owned(s) for s in loop.runtime.running()])
        return len(loop.runtime.running()) == 2 and total == 6

    await loop.converge(daemon, settled, "drain to 2 shards keeping 6 sessions")
    kinds = [e.kind for e in await daemon.events.recent(100)]
    assert "drain" in kinds and "adopt" in kinds and "stop" in kinds


async def test_dead_shard_is_replaced_under_the_same_id(loop: Loop) -> None:
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2))
    await loop.converge(daemon, lambda: loop.beating(2))
    assert await loop.place(["x1", "x2"]) == []
    await loop.runtime.crash("shard-2")
    await loop.converge(daemon, lambda: loop.runtime.starts.count("shard-2") == 2, "replacement")
    assert loop.runtime.running() == ["shard-1", "shard-2"]
    assert await loop.owned("shard-1") + await loop.owned("shard-2") == 2
    events = await daemon.events.recent(20)
    assert any(e.kind == "replace" and e.shard == "shard-2" for e in events)


async def test_killed_mid_scale_restart_converges_without_duplicates(loop: Loop) -> None:
    config = make_config(loop.redis_url, min_shards=4)
    stalling = StallingStarts(loop.runtime)
    first = await loop.daemon(config, holder="first", runtime=stalling)
    task = asyncio.create_task(first.reconcile())
    await stalling.started.wait()
    task.cancel()  # the daemon is killed while its first start is in flight
    await asyncio.gather(task, return_exceptions=True)
    assert loop.runtime.running() == ["shard-1"]

    await loop.lapse_leader_lock()
    second = await loop.daemon(config, holder="second")
    await loop.converge(second, lambda: len(loop.runtime.running()) == 4, "4 shards")
    assert sorted(loop.runtime.starts) == ["shard-1", "shard-2", "shard-3", "shard-4"]


async def test_two_daemons_only_the_leader_acts_and_a_standby_takes_over(loop: Loop) -> None:
    config = make_config(loop.redis_url, min_shards=2)
    a = await loop.daemon(config, holder="a")
    b = await loop.daemon(config, holder="b")
    first = await loop.step(a)
    second = await loop.step(b)
    assert first.leader and not second.leader
    assert second.events == ()
    assert loop.runtime.running() == ["shard-1", "shard-2"]

    starts_before = list(loop.runtime.starts)
    b.reconfigure(make_config(loop.redis_url, min_shards=3))
    await loop.step(b)
    assert loop.runtime.starts == starts_before, "the standby never acts"
    await loop.lapse_leader_lock()  # "a" died without releasing it
    await loop.converge(b, lambda: len(loop.runtime.running()) == 3, "takeover")
    assert b.state.leader


async def test_bad_config_reload_keeps_the_running_config(loop: Loop, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    good = f"redis:\n  url: {loop.redis_url}\nnginx:\n  enabled: false\npolicy:\n  min_shards: 2\n"
    path.write_text(good)
    config = load_config(path, context=VALIDATION)
    daemon = await loop.daemon(config, config_path=path)
    await loop.step(daemon)
    path.write_text("policy:\n  min_shards: lots\n  max_shard: 3\n")
    daemon.request_reload()
    await loop.step(daemon)
    assert daemon.config.policy.min_shards == 2
    assert "policy.min_shards" in daemon.state.config_error
    assert "policy.max_shard: unknown key" in daemon.state.config_error
    path.write_text(good.replace("min_shards: 2", "min_shards: 3"))
    daemon.request_reload()
    await loop.step(daemon)
    assert daemon.config.policy.min_shards == 3 and daemon.state.config_error == ""


async def test_dry_run_decides_but_touches_nothing(loop: Loop) -> None:
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2, dry_run=True))
    decision = await loop.step(daemon)
    assert [a.kind.value for a in decision.plan.actions] == ["start"] * 2
    assert loop.runtime.starts == []
    assert {e.outcome for e in await daemon.events.recent(10)} == {Outcome.DRY_RUN}
    exported = generate_latest(daemon.metrics.registry).decode()
    assert 'chatscale_scale_events_total{kind="start",outcome="dry_run"} 2.0' in exported


async def test_failed_actions_are_counted_under_their_outcome_with_the_reason_kept(
    loop: Loop,
) -> None:
    daemon = await loop.daemon(make_config(loop.redis_url))
    loop.runtime.fail_starts = True
    decision = await loop.step(daemon)
    assert [(e.outcome, e.detail) for e in decision.events] == [
        (Outcome.FAILED, "injected start failure")
    ]
    exported = generate_latest(daemon.metrics.registry).decode()
    assert 'chatscale_scale_events_total{kind="start",outcome="failed"} 1.0' in exported
    recorded = await daemon.events.recent(1)
    assert (recorded[0].outcome, recorded[0].detail) == (Outcome.FAILED, "injected start failure")


async def test_unreadable_runtime_holds_the_fleet_although_leading(loop: Loop) -> None:
    config = make_config(loop.redis_url, min_shards=2, scale_down={"stabilization": 0})
    daemon = await loop.daemon(config)
    await loop.converge(daemon, lambda: loop.beating(2))
    daemon.reconfigure(make_config(loop.redis_url, min_shards=1, scale_down={"stabilization": 0}))
    loop.runtime.fail_lists = True
    for _ in range(5):
        decision = await loop.step(daemon)
        assert decision.leader and decision.plan.held
    assert loop.runtime.stops == []
    loop.runtime.fail_lists = False
    await loop.converge(daemon, lambda: loop.beating(1), "the same policy shrinks on good data")


async def test_unreachable_redis_holds_and_never_leads(loop: Loop) -> None:
    blind = await loop.daemon(make_config("redis://127.0.0.1:1/0", min_shards=1), holder="blind")
    decision = await loop.step(blind)
    assert not decision.leader and decision.plan.held
    assert "redis unreadable" in decision.plan.reasons[0]


async def test_failed_starts_are_reported_and_retried(loop: Loop) -> None:
    daemon = await loop.daemon(make_config(loop.redis_url))
    loop.runtime.fail_starts = True
    decision = await loop.step(daemon)
    assert [str(e) for e in decision.events] == ["start shard-1: failed: injected start failure"]
    loop.runtime.fail_starts = False
    await loop.converge(daemon, lambda: loop.runtime.running() == ["shard-1"])


async def test_heartbeats_lost_during_a_redis_outage_do_not_replace_the_fleet(loop: Loop) -> None:
    """Redis away for longer than the heartbeat timeout: every heartbeat went stale meanwhile.
    When Redis answers again the shards get a whole timeout to beat before any is called dead."""
    host, port = loop.redis_url.removeprefix("redis://").split("/")[0].split(":")
    async with TcpProxy(host, int(port)) as proxy:
        config = make_config(proxy.url(), min_shards=3)
        # Past their boot grace by the time Redis is back: only the fresh-data rule protects them.
        config = config.model_copy(
            update={"shard": config.shard.model_copy(update={"boot_timeout": 1})}
        )
        daemon = await loop.daemon(config)
        await loop.converge(daemon, lambda: loop.beating(3), "3 beating shards")
        proxy.cut()  # the daemon loses Redis; the shards cannot beat either
        for _ in range(8):  # 2.4 s > heartbeat timeout (1 s)
            decision = await daemon.reconcile()
            assert decision is not None and decision.plan.held
            loop.clock.advance(0.3)
        proxy.restore()
        decision = await daemon.reconcile()  # data fresh again, heartbeats still stale
        assert decision is not None and not decision.plan.held
        fleet = daemon.state.fleet
        assert fleet is not None and len(fleet.beats) == 3
        assert all(not b.fresh(fleet.now, 1.0) for b in fleet.beats.values()), "stale beats"
        assert not decision.plan.actions, decision.plan
        await loop.converge(daemon, lambda: loop.beating(3), "the same 3 shards beating again")
    assert sorted(loop.runtime.starts) == ["shard-1", "shard-2", "shard-3"], "nothing replaced"


@pytest.mark.parametrize("surge", [1, 0], ids=["max_surge 1", "max_surge 0"])
async def test_shards_past_max_age_are_replaced_one_at_a_time_keeping_every_session(
    loop: Loop, surge: int
) -> None:
    """recycle.max_age: each shard, once too old, is drained (its sessions adopted by others)
    and stopped, and a new one takes its place; never two at once, nothing lost. With
    max_surge (the default) the new one starts first: each drain follows a start."""
    recycle = {"max_age": 30, "max_surge": surge}
    config = make_config(loop.redis_url, min_shards=2, recycle=recycle)
    daemon = await loop.daemon(config)
    await loop.converge(daemon, lambda: loop.beating(2))
    for shard_id, sids in (("shard-1", "ab"), ("shard-2", "cd")):
        for sid in sids:
            assert await loop.runtime.shard(shard_id).create(sid)
    most_draining = 0
    first = {s: loop.runtime.shard(s).started_at for s in loop.runtime.running()}

    async def renewed() -> bool:
        nonlocal most_draining
        running = loop.runtime.running()
        draining = [s for s in running if loop.runtime.shard(s).draining]
        most_draining = max(most_draining, len(draining))
        # (ids are reused: a new shard-1 is a new process, started later)
        new = all(loop.runtime.shard(s).started_at > max(first.values()) for s in running)
        total = sum([await loop.owned(s) for s in running])
        return new and total == 4

    await loop.converge(daemon, renewed, "both shards replaced, 4 sessions kept", passes=600)
    assert len(loop.runtime.running()) == 2, loop.runtime.running()
    assert most_draining == 1, "max_at_once (1) recycle at a time"
    events = await daemon.events.recent(100)
    drains = [e for e in events if e.kind == "drain"]
    assert {e.shard for e in drains} == {"shard-1", "shard-2"}
    assert all("recycle" in e.reason for e in drains), [e.reason for e in drains]
    # After the first two starts, in order: (start, drain) twice with max_surge 1; a drain
    # first with max_surge 0 (the others have room for its 2 sessions).
    sequence = [e.kind for e in reversed(events) if e.kind in ("start", "drain")][2:]
    assert sequence[:4] == (["start", "drain"] * 2 if surge else ["drain", "start"] * 2)
