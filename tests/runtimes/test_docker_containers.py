"""What the Docker runtime gives every shard container (real Docker engine)."""

from __future__ import annotations

import asyncio
import time

from support.harness import Harness

from autoscaler.loop.daemon import Daemon
from chatscale_contract.configload import load_config


async def test_every_shard_container_has_its_limits_labels_and_name(
    docker_harness: Harness,
) -> None:
    h = docker_harness
    config = load_config(h.write(h.config(min_shards=2)))
    assert config.shard.memory_limit == "10g", "the default limit is what is tested"
    async with Daemon(config) as daemon:
        deadline = time.monotonic() + 40
        while h.running() != ["shard-1", "shard-2"]:
            assert time.monotonic() < deadline, "2 shard containers never ran"
            await daemon.reconcile()
            await asyncio.sleep(0.3)
    for shard_id in ("shard-1", "shard-2"):
        container = h.docker.containers.get(f"{h.project}-{shard_id}")
        host = container.attrs["HostConfig"]
        assert host["Memory"] == 10 * 1024**3, "no container runs without its memory limit"
        assert host["MemorySwap"] == 10 * 1024**3
        assert host["NanoCpus"] == 2_000_000_000
        assert host["ShmSize"] == 1024**3
        assert host["RestartPolicy"]["Name"] == "no"
        assert container.labels["chatscale.shard"] == shard_id
        assert container.labels["chatscale.config"] == config.fingerprint()
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["SHARD_ID"] == shard_id and env["SHARD_ADDR"] == f"{h.project}-{shard_id}:8000"
        assert h.network in container.attrs["NetworkSettings"]["Networks"]
