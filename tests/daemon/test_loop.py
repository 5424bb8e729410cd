"""The reconcile loop end to end against real Redis, with heartbeat-only shards in memory.

The shards here are control-plane stand-ins (tests/support/heartbeat_shard.py): they heartbeat,
count sessions and answer drain requests, without a browser. Real shards are tested in
tests/shard; real runtimes in tests/runtimes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis
from support.loop import KEYS, converge, make_config, open_daemon, owned, place
from support.memruntime import MemoryRuntime

from autoscaler.daemon import Daemon


async def test_scale_up_under_load_and_down_after_the_window(
    runtime: MemoryRuntime, daemons: list[Daemon], aredis: aioredis.Redis, redis_url: str
) -> None:
    daemon = await open_daemon(daemons, make_config(redis_url), runtime)

    async def shards(n: int) -> bool:
        beating = [await aredis.exists(KEYS.shard(s)) for s in runtime.running()]
        return len(runtime.running()) == n and all(beating)

    await converge(daemon, lambda: shards(1), what="min_shards 1")
    left = await place(aredis, runtime, [f"s{n}" for n in range(12)])
    assert len(left) == 7, "5 fit on shard-1; 7 are refused and count as demand"
    await converge(daemon, lambda: shards(3), what="3 shards for 12 sessions + 1 buffer")
    assert runtime.starts == ["shard-1", "shard-2", "shard-3"]
    assert await place(aredis, runtime, left) == []

    stops_at: list[int] = []
    original_stop = runtime.stop

    async def checked_stop(shard_id: str, timeout: float) -> None:
        stops_at.append(await owned(aredis, shard_id))
        await original_stop(shard_id, timeout)

    runtime.stop = checked_stop  # type: ignore[method-assign]
    for shard_id in runtime.running():
        await aredis.delete(KEYS.shard_sessions(shard_id))
    await converge(daemon, lambda: shards(1), timeout=20, what="back to min_shards")
    assert stops_at == [0, 0], "only empty shards are stopped"


async def test_scale_down_waits_for_the_stabilization_window(
    runtime: MemoryRuntime, daemons: list[Daemon], aredis: aioredis.Redis, redis_url: str
) -> None:
    config = make_config(redis_url, min_shards=3, scale_down={"stabilization": 60})
    daemon = await open_daemon(daemons, config, runtime)
    await converge(daemon, lambda: _true(len(runtime.running()) == 3))
    lowered = make_config(redis_url, min_shards=1, scale_down={"stabilization": 60})
    daemon.config = lowered
    daemon._wire()
    for _ in range(5):
        decision = await daemon.reconcile()
        assert decision is not None and decision.plan.actions == ()
        await asyncio.sleep(0.1)
    assert len(runtime.running()) == 3
    assert any("history" in r or "held" in r for r in decision.plan.reasons)


async def test_busy_shards_are_drained_and_their_sessions_adopted(
    runtime: MemoryRuntime, daemons: list[Daemon], aredis: aioredis.Redis, redis_url: str
) -> None:
    config = make_config(redis_url, min_shards=3, scale_down={"stabilization": 0.5})
    daemon = await open_daemon(daemons, config, runtime)
    await converge(daemon, lambda: _true(len(runtime.running()) == 3))
    await converge(daemon, lambda: _true(len(daemon.state.fleet.beats) == 3))  # type: ignore[union-attr]
    for shard_id, sids in (("shard-1", "ab"), ("shard-2", "cd"), ("shard-3", "ef")):
        await aredis.sadd(KEYS.shard_sessions(shard_id), *sids)
    daemon.config = make_config(redis_url, min_shards=1, scale_down={"stabilization": 0.5})
    daemon._wire()

    async def settled() -> bool:
        total = sum([await owned(aredis, s) for s in runtime.running()])
        return len(runtime.running()) == 2 and total == 6

    await converge(daemon, settled, timeout=20, what="drain to 2 shards keeping 6 sessions")
    kinds = [e.kind for e in await daemon.events.recent(100)]
    assert "drain" in kinds and "adopt" in kinds and "stop" in kinds


async def test_dead_shard_is_replaced_under_the_same_id(
    runtime: MemoryRuntime, daemons: list[Daemon], aredis: aioredis.Redis, redis_url: str
) -> None:
    daemon = await open_daemon(daemons, make_config(redis_url, min_shards=2), runtime)
    await converge(daemon, lambda: _true(len(runtime.running()) == 2))
    await place(aredis, runtime, ["x1", "x2"])
    await runtime.crash("shard-2")
    await converge(daemon, lambda: _true(runtime.starts.count("shard-2") == 2), what="replacement")
    assert runtime.running() == ["shard-1", "shard-2"]
    assert await owned(aredis, "shard-1") + await owned(aredis, "shard-2") == 2
    events = await daemon.events.recent(20)
    assert any(e.kind == "replace" and e.shard == "shard-2" for e in events)


async def test_killed_mid_scale_restart_converges_without_duplicates(
    runtime: MemoryRuntime, daemons: list[Daemon], redis_url: str
) -> None:
    config = make_config(redis_url, min_shards=4)
    first = await open_daemon(daemons, config, runtime, holder="first")
    started = asyncio.Event()
    original_start = runtime.start

    async def slow_start(shard_id: str) -> object:
        instance = await original_start(shard_id)
        started.set()
        await asyncio.sleep(30)  # the daemon is killed while this start is in flight
        return instance

    runtime.start = slow_start  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(first.reconcile())
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    runtime.start = original_start  # type: ignore[method-assign]
    assert runtime.running() == ["shard-1"]

    # A new daemon: the old one's lock lapses after leader_ttl, then it converges.
    second = await open_daemon(daemons, config, runtime, holder="second")
    await converge(second, lambda: _true(len(runtime.running()) == 4), what="4 shards")
    assert sorted(runtime.starts) == ["shard-1", "shard-2", "shard-3", "shard-4"]


async def test_two_daemons_only_the_leader_acts_and_a_standby_takes_over(
    runtime: MemoryRuntime, daemons: list[Daemon], redis_url: str
) -> None:
    config = make_config(redis_url, min_shards=2)
    a = await open_daemon(daemons, config, runtime, holder="a")
    b = await open_daemon(daemons, config, runtime, holder="b")
    first = await a.reconcile()
    second = await b.reconcile()
    assert first is not None and first.leader and second is not None and not second.leader
    assert second.events == ()
    assert runtime.running() == ["shard-1", "shard-2"]

    runtime_before = list(runtime.starts)
    min_three = make_config(redis_url, min_shards=3)
    b.config = min_three
    b._wire()
    await b.reconcile()
    assert runtime.starts == runtime_before, "the standby never acts"
    # "a" dies without releasing its lock: "b" takes over once it lapses (leader_ttl 1.5 s).
    await converge(b, lambda: _true(len(runtime.running()) == 3), timeout=10, what="takeover")
    assert b.state.leader


async def test_bad_config_reload_keeps_the_running_config(
    runtime: MemoryRuntime, daemons: list[Daemon], redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"redis:\n  url: {redis_url}\nnginx:\n  enabled: false\npolicy:\n  min_shards: 2\n"
    )
    from autoscaler.configload import load_config

    daemon = await open_daemon(daemons, load_config(path), runtime, config_path=path)
    await daemon.reconcile()
    path.write_text("policy:\n  min_shards: lots\n  max_shard: 3\n")
    daemon.request_reload()
    await daemon.reconcile()
    assert daemon.config.policy.min_shards == 2
    assert "policy.min_shards" in daemon.state.config_error
    assert "policy.max_shard: unknown key" in daemon.state.config_error
    path.write_text(
        f"redis:\n  url: {redis_url}\nnginx:\n  enabled: false\npolicy:\n  min_shards: 3\n"
    )
    daemon.request_reload()
    await daemon.reconcile()
    assert daemon.config.policy.min_shards == 3 and daemon.state.config_error == ""


async def test_dry_run_decides_but_touches_nothing(
    runtime: MemoryRuntime, daemons: list[Daemon], redis_url: str
) -> None:
    daemon = await open_daemon(daemons, make_config(redis_url, min_shards=2, dry_run=True), runtime)
    decision = await daemon.reconcile()
    assert decision is not None and [a.kind.value for a in decision.plan.actions] == ["start"] * 2
    assert runtime.starts == []
    assert {e.outcome for e in await daemon.events.recent(10)} == {"dry run"}


async def test_unreachable_redis_holds_the_fleet(
    runtime: MemoryRuntime, daemons: list[Daemon], redis_url: str
) -> None:
    daemon = await open_daemon(daemons, make_config(redis_url, min_shards=2), runtime)
    await converge(daemon, lambda: _true(len(runtime.running()) == 2))
    broken = make_config("redis://127.0.0.1:1/0", min_shards=1)
    blind = await open_daemon(daemons, broken, runtime, holder="blind")
    decision = await blind.reconcile()
    assert decision is not None and not decision.leader and decision.plan.held
    assert runtime.stops == []


async def test_failed_starts_are_reported_and_retried(
    runtime: MemoryRuntime, daemons: list[Daemon], redis_url: str
) -> None:
    daemon = await open_daemon(daemons, make_config(redis_url), runtime)
    runtime.fail_starts = True
    decision = await daemon.reconcile()
    assert decision is not None
    assert [e.outcome for e in decision.events] == ["failed: injected start failure"]
    runtime.fail_starts = False
    await converge(daemon, lambda: _true(runtime.running() == ["shard-1"]))


async def _true(value: bool) -> bool:
    return value


async def test_heartbeats_lost_during_a_redis_outage_do_not_replace_the_fleet(
    runtime: MemoryRuntime, daemons: list[Daemon], aredis: aioredis.Redis, redis_url: str
) -> None:
    """Redis away for longer than the heartbeat timeout: every heartbeat key expired meanwhile.
    When Redis answers again the shards get a whole timeout to beat before any is called dead."""
    config = make_config(redis_url, min_shards=3)
    # Past their boot grace by the time Redis is back: only the fresh-data rule protects them.
    config = config.model_copy(
        update={"shard": config.shard.model_copy(update={"boot_timeout": 1})}
    )
    daemon = await open_daemon(daemons, config, runtime)

    async def beating() -> bool:
        return (
            all([await aredis.exists(KEYS.shard(s)) for s in runtime.running()])
            and len(runtime.running()) == 3
        )

    await converge(daemon, beating, what="3 beating shards")
    real_redis = daemon.observer.redis
    daemon.observer.redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # unreachable
    for entry in runtime.shards.values():
        entry.shard.paused = True  # the shards cannot reach Redis either
    for _ in range(8):  # 1.6 s > heartbeat timeout (1 s): every heartbeat key expires
        decision = await daemon.reconcile()
        assert decision is not None and decision.plan.held
        await asyncio.sleep(0.2)
    assert not [s for s in runtime.running() if await aredis.exists(KEYS.shard(s))]
    await daemon.observer.redis.aclose()
    daemon.observer.redis = real_redis
    decision = await daemon.reconcile()  # data fresh again, heartbeats still missing
    assert decision is not None and not decision.plan.actions, decision.plan
    for entry in runtime.shards.values():
        entry.shard.paused = False
    await converge(daemon, beating, what="the same 3 shards beating again")
    assert sorted(runtime.starts) == ["shard-1", "shard-2", "shard-3"], "nothing was replaced"
