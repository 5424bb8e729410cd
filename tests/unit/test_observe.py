"""Pure parts of observing and acting: classifying shards, Docker arguments, routable shards."""

from __future__ import annotations

import pytest

from autoscaler.config import Config
from autoscaler.front import route_shards, route_table
from autoscaler.model import Beat, ShardState
from autoscaler.observe import Fleet, classify, to_observed
from autoscaler.runtime import ShardInstance, shard_env
from autoscaler.runtime_docker import container_args

NOW = 1_000_000.0
CONFIG = Config.model_validate(
    {"heartbeat": {"interval": 5, "timeout": 20}, "shard": {"boot_timeout": 90}}
)


def instance(running: bool = True, age: float = 500) -> ShardInstance:
    return ShardInstance("shard-1", running, NOW - age, "chatscale-shard-1:8000")


def beat(age: float = 1, state: str = "accepting", sessions: int = 3) -> Beat:
    return Beat("shard-1", "chatscale-shard-1:8000", state, sessions, 50, 0, 0, NOW - age)


@pytest.mark.parametrize(
    ("inst", "hb", "owned", "expected"),
    [
        (instance(), beat(), 3, ShardState.READY),
        (instance(), beat(state="full"), 3, ShardState.READY),
        (instance(), beat(state="draining"), 3, ShardState.DRAINING),
        (instance(age=10), None, 0, ShardState.STARTING),
        (instance(age=10), beat(age=100), 0, ShardState.STARTING),  # restarted, not beating yet
        (instance(age=500), None, 0, ShardState.DEAD),  # never beat within boot_timeout
        (instance(age=500), beat(age=21), 3, ShardState.DEAD),  # silent past the timeout
        (instance(age=500), beat(age=19), 3, ShardState.READY),
        (instance(running=False), beat(), 3, ShardState.DEAD),  # exited
        (None, None, 4, ShardState.DEAD),  # container gone, sessions still its own
        (None, None, 0, None),  # nothing left: not ours to manage
    ],
)
def test_classify(
    inst: ShardInstance | None, hb: Beat | None, owned: int, expected: ShardState | None
) -> None:
    assert classify(inst, hb, owned, NOW, CONFIG) == expected


def test_to_observed_counts_registry_sessions_and_pending() -> None:
    fleet = Fleet(
        NOW,
        instances={"shard-1": instance()},
        beats={"shard-1": beat(sessions=2)},
        owned={"shard-1": 3, "shard-4": 2},
        pending=5,
    )
    observed = to_observed(fleet, CONFIG)
    views = {v.id: v for v in observed.shards}
    assert views["shard-1"].sessions == 3, "the registry's count wins over a lagging heartbeat"
    assert views["shard-4"].state == ShardState.DEAD and views["shard-4"].sessions == 2
    assert observed.pending == 5 and observed.fresh


def test_unreadable_data_is_stale() -> None:
    observed = to_observed(Fleet(NOW, error="redis unreadable: refused"), CONFIG)
    assert not observed.fresh and observed.stale_reason == "redis unreadable: refused"


def test_container_args_carry_limits_labels_and_env() -> None:
    config = Config.model_validate(
        {
            "shard": {
                "memory_limit": "10g",
                "cpus": 1.5,
                "network": "net",
                "env": {"API_KEY": "k"},
            },
            "runtime": {"project": "demo"},
        }
    )
    args = container_args(config, "shard-3")
    assert args["name"] == "demo-shard-3" and args["hostname"] == "demo-shard-3"
    assert args["mem_limit"] == 10 * 1024**3 == args["memswap_limit"]
    assert args["nano_cpus"] == 1_500_000_000
    assert args["labels"] == {
        "chatscale.project": "demo",
        "chatscale.shard": "shard-3",
        "chatscale.config": config.fingerprint(),
    }
    assert args["network"] == "net"
    assert args["restart_policy"] == {"Name": "no"}
    env = args["environment"]
    assert env["SHARD_ID"] == "shard-3" and env["SHARD_ADDR"] == "demo-shard-3:8000"
    assert env["API_KEY"] == "k" and env["MAX_SESSIONS"] == "50"


def test_shard_env_carries_the_shared_settings() -> None:
    env = shard_env(CONFIG, "shard-2", "127.0.0.1:8102", 8102)
    assert env["HEARTBEAT_TIMEOUT"] == "20" and env["PORT"] == "8102"
    assert env["REDIS_URL"] == CONFIG.redis.url and env["KEY_PREFIX"] == "cs:"


def test_route_shards_only_live_beating_shards() -> None:
    def b(sid: str, state: str, age: float = 1) -> Beat:
        return Beat(sid, f"{sid}:8000", state, 1, 50, 0, 0, NOW - age)

    def i(sid: str, running: bool = True) -> ShardInstance:
        return ShardInstance(sid, running, NOW - 100, f"{sid}:8000")

    fleet = Fleet(
        NOW,
        instances={s: i(s) for s in ("shard-1", "shard-2", "shard-3", "shard-4")}
        | {"shard-5": i("shard-5", running=False)},
        beats={
            "shard-1": b("shard-1", "accepting"),
            "shard-2": b("shard-2", "full"),
            "shard-3": b("shard-3", "draining"),
            "shard-4": b("shard-4", "accepting", age=60),  # stale
            "shard-5": b("shard-5", "accepting"),  # exited
        },
        owners={"s1": "shard-3"},
    )
    shards = route_shards(fleet, CONFIG)
    assert [(s.id, s.in_ring, s.accepting) for s in shards] == [
        ("shard-1", True, True),
        ("shard-2", True, False),
        ("shard-3", False, False),
    ]
    table = route_table(fleet, CONFIG)
    assert table.exceptions == {"s1": "shard-3"}, "a draining shard's sessions stay reachable"
