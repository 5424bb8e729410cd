"""The daemon against real runtimes: a real Docker engine and real local processes.

Every test runs twice (`harness` is parametrized: docker, local). Shards are the heartbeat-only
stand-in; see conftest.py for why.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from support.harness import Harness
from support.procs import start, wait_for
from support.runtimes import StopAudit

from autoscaler.engine.schedules import VALIDATION
from autoscaler.loop.daemon import Daemon
from autoscaler.runtimes import make_runtime
from chatscale_contract.configload import load_config

AUTOSCALER = str(Path(sys.executable).with_name("autoscaler"))


async def converge(daemon: Daemon, check: Any, timeout: float = 40, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not converge: {what}; last: {daemon.state.decisions[0]}")
        await daemon.reconcile()
        await asyncio.sleep(0.3)


async def test_scale_up_under_load_then_down_stopping_only_empty_shards(harness: Harness) -> None:
    config = load_config(harness.write(harness.config()), context=VALIDATION)

    async def owned(shard_id: str) -> int:
        return harness.owned(shard_id)

    audit = StopAudit(make_runtime(config), owned)
    async with Daemon(config, runtime=audit) as daemon:
        await converge(daemon, lambda: harness.running() == ["shard-1"], what="min_shards")
        wait_for(lambda: harness.beating(1), 20, "shard-1 beating")
        refused = harness.create([f"s{n}" for n in range(12)])
        assert len(refused) == 7
        await converge(daemon, lambda: len(harness.running()) == 3, what="3 shards for 12 + 1")
        wait_for(lambda: harness.beating(3), 20, "3 shards beating")
        assert harness.create(refused) == []

        harness.delete_all()
        await converge(daemon, lambda: harness.running() == ["shard-1"], what="back to 1")
        assert audit.owned_at_stop == [0, 0]


async def test_sigkilled_shard_is_replaced_under_the_same_id(harness: Harness) -> None:
    config = load_config(harness.write(harness.config(min_shards=2)), context=VALIDATION)
    async with Daemon(config) as daemon:
        await converge(daemon, lambda: harness.running() == ["shard-1", "shard-2"])
        wait_for(lambda: harness.beating(2), 20, "2 shards beating")
        assert harness.create(["k1", "k2", "k3", "k4", "k5", "k6"]) == []
        before = harness.identity("shard-2")
        assert before
        harness.kill("shard-2")
        await converge(
            daemon,
            lambda: harness.identity("shard-2") not in ("", before),
            what="shard-2 replaced",
        )
        assert harness.running() == ["shard-1", "shard-2"]
        assert harness.owned("shard-1") + harness.owned("shard-2") == 6


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
        config["activator"]["bind"] = f"127.0.0.1:{_port()}"
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


def test_a_taken_port_is_a_clear_error(harness: Harness) -> None:
    config = harness.config()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config["activator"]["bind"] = f"127.0.0.1:{taken.getsockname()[1]}"
        path = harness.write(config)
        log = harness.folder / "taken.log"
        proc = start([AUTOSCALER, "run", "--config", str(path)], log)
        assert proc.wait(30) == 2
    assert "cannot listen (activator.bind 127.0.0.1:" in log.read_text()
    assert "Traceback" not in log.read_text()


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
