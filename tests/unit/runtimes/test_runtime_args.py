"""What a runtime asks of its engine (pure): Docker container arguments, the shard environment."""

from __future__ import annotations

from autoscaler.runtimes.base import shard_env
from autoscaler.runtimes.docker import container_args
from chatscale_contract.config import Config

CONFIG = Config.model_validate(
    {"heartbeat": {"interval": 5, "timeout": 20}, "shard": {"boot_timeout": 90}}
)


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
