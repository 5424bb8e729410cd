"""The daemon against real runtimes: a real Docker engine and real local processes.

Every test runs twice (`harness` is parametrized: docker, local). Shards are the heartbeat-only
stand-in; see conftest.py for why.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from support.harness import Harness
from support.procs import start, wait_for

from autoscaler.configload import load_config
from autoscaler.daemon import Daemon
from autoscaler.keys import Keys

KEYS = Keys("cs:")
AUTOSCALER = str(Path(sys.executable).with_name("autoscaler"))


def load(redis_url: str, sessions: list[str], capacity: int = 5) -> list[str]:
    """Place sessions on beating shards with room (as shards would); return those refused."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    refused = []
    shard_ids = sorted(i for i in client.zrange(KEYS.shards, 0, -1) if client.exists(KEYS.shard(i)))
    for sid in sessions:
        for shard_id in shard_ids:
            if client.scard(KEYS.shard_sessions(shard_id)) < capacity:
                client.sadd(KEYS.shard_sessions(shard_id), sid)
                client.zrem(KEYS.pending, sid)
                break
        else:
            refused.append(sid)
            client.zadd(KEYS.pending, {sid: time.time()})
    client.close()
    return refused


def owned(redis_url: str, shard_id: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.scard(KEYS.shard_sessions(shard_id)))
    finally:
        client.close()


async def converge(daemon: Daemon, check: Any, timeout: float = 40, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not converge: {what}; last: {daemon.state.decisions[0]}")
        await daemon.reconcile()
        await asyncio.sleep(0.3)


async def test_scale_up_under_load_then_down_stopping_only_empty_shards(harness: Harness) -> None:
    daemon = Daemon(load_config(harness.write(harness.config())))
    await daemon.open()
    try:
        await converge(daemon, lambda: harness.running() == ["shard-1"], what="min_shards")
        wait_for(lambda: load(harness.redis_url, []) == [] and _beating(harness, 1), 20, "beat")
        refused = load(harness.redis_url, [f"s{n}" for n in range(12)])
        assert len(refused) == 7
        await converge(daemon, lambda: len(harness.running()) == 3, what="3 shards for 12 + 1")
        wait_for(lambda: _beating(harness, 3), 20, "3 shards beating")
        assert load(harness.redis_url, refused) == []

        stopped_with: list[int] = []
        real_stop = daemon.runtime.stop

        async def checked_stop(shard_id: str, timeout: float) -> None:
            stopped_with.append(owned(harness.redis_url, shard_id))
            await real_stop(shard_id, timeout)

        daemon.runtime.stop = checked_stop  # type: ignore[method-assign]
        client = redis.Redis.from_url(harness.redis_url)
        for shard_id in harness.running():
            client.delete(KEYS.shard_sessions(shard_id))
        client.close()
        await converge(daemon, lambda: harness.running() == ["shard-1"], what="back to 1")
        assert stopped_with == [0, 0]
    finally:
        await daemon.close()


async def test_sigkilled_shard_is_replaced_under_the_same_id(harness: Harness) -> None:
    daemon = Daemon(load_config(harness.write(harness.config(min_shards=2))))
    await daemon.open()
    try:
        await converge(daemon, lambda: harness.running() == ["shard-1", "shard-2"])
        wait_for(lambda: _beating(harness, 2), 20, "2 shards beating")
        load(harness.redis_url, ["k1", "k2", "k3", "k4", "k5", "k6"])
        before = harness.identity("shard-2")
        harness.kill("shard-2")
        await converge(
            daemon,
            lambda: "shard-2" in harness.running() and harness.identity("shard-2") != before,
            what="shard-2 replaced",
        )
        assert harness.running() == ["shard-1", "shard-2"]
        assert owned(harness.redis_url, "shard-1") + owned(harness.redis_url, "shard-2") == 6
    finally:
        await daemon.close()


def test_daemon_killed_mid_scale_restarts_without_duplicates(harness: Harness) -> None:
    config = harness.config(min_shards=4, scale_up={"max_step": 1})
    path = harness.write(config)
    first = start([AUTOSCALER, "run", "--config", str(path)], harness.folder / "a1.log")
    wait_for(lambda: len(harness.running()) >= 2, 30, "the first daemon to start shards")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert len(harness.running()) < 4, "killed mid-scale"
    second = start([AUTOSCALER, "run", "--config", str(path)], harness.folder / "a2.log")
    try:
        wait_for(lambda: len(harness.running()) == 4, 40, "4 shards after the restart")
        time.sleep(2)
        assert harness.running() == ["shard-1", "shard-2", "shard-3", "shard-4"]
    finally:
        _term(second)


def test_two_daemons_one_acts_and_the_other_takes_over(harness: Harness) -> None:
    config = harness.config(min_shards=2)
    daemons = []
    for name in ("a", "b"):
        config["status"]["bind"] = f"127.0.0.1:{_port()}"
        path = harness.write(config, f"{name}.yaml")
        proc = start([AUTOSCALER, "run", "--config", str(path)], harness.folder / f"{name}.log")
        daemons.append((proc, config["status"]["bind"]))
    try:
        wait_for(lambda: all(_status(bind) for _, bind in daemons), 20, "both status pages")
        wait_for(lambda: harness.running() == ["shard-1", "shard-2"], 30, "2 shards")
        leaders = [bind for _, bind in daemons if _status(bind)["leader"]]
        assert len(leaders) == 1, "exactly one daemon leads"
        leader = next(p for p, bind in daemons if bind == leaders[0])
        standby = next(bind for _, bind in daemons if bind != leaders[0])
        events = _status(standby)["decisions"]
        assert all(not d["leader"] and not d["outcomes"] for d in events), "the standby never acts"
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        wait_for(lambda: _status(standby)["leader"], 15, "the standby to take over")
        assert harness.running() == ["shard-1", "shard-2"]
    finally:
        for proc, _ in daemons:
            _term(proc)


def test_bad_config_reload_keeps_the_old_one(harness: Harness) -> None:
    config = harness.config(min_shards=2)
    path = harness.write(config)
    bind = config["status"]["bind"]
    proc = start([AUTOSCALER, "run", "--config", str(path)], harness.folder / "run.log")
    try:
        wait_for(lambda: harness.running() == ["shard-1", "shard-2"], 30, "2 shards")
        config["policy"]["min_shards"] = "three"
        config["policy"]["max_shard"] = 3
        path.write_text(json.dumps(config))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _status(bind)["config_error"], 10, "the reload error on the status page")
        error = _status(bind)["config_error"]
        assert "policy.min_shards" in error and "policy.max_shard: unknown key" in error
        time.sleep(2)
        assert harness.running() == ["shard-1", "shard-2"], "the old config keeps running"
        config["policy"]["min_shards"] = 3
        del config["policy"]["max_shard"]
        path.write_text(json.dumps(config))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(harness.running()) == 3, 30, "the fixed config applied")
        assert _status(bind)["config_error"] is None
    finally:
        _term(proc)


def _beating(harness: Harness, count: int) -> bool:
    client = redis.Redis.from_url(harness.redis_url)
    try:
        return sum(bool(client.exists(KEYS.shard(s))) for s in harness.running()) == count
    finally:
        client.close()


def _status(bind: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{bind}/api/status", timeout=2) as resp:
            return dict(json.load(resp))
    except OSError:
        return {}


def _port() -> int:
    from support.procs import free_port

    return free_port()


def _term(proc: Any) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(20)
