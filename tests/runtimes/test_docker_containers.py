"""What the Docker runtime gives every shard container (real Docker engine)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable

import docker
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


async def test_a_new_image_under_the_same_tag_rolls_out_one_shard_at_a_time(
    docker_harness: Harness, heartbeat_image: str
) -> None:
    """recycle.outdated with the image rebuilt under the same tag (as `docker compose build` or
    a pull does): every shard container is replaced by one of the new image, one at a time."""
    h = docker_harness
    tag = f"chatscale-rollout-{h.project}:test"
    h.docker.images.get(heartbeat_image).tag(tag)
    newer = _derived_image(h, heartbeat_image)
    try:
        settings = h.config(min_shards=2, recycle={"outdated": True})
        settings["shard"]["image"] = tag
        config = load_config(h.write(settings))
        async with Daemon(config) as daemon:
            await _passes(daemon, lambda: h.running() == ["shard-1", "shard-2"], 40)
            old = {s: _image_of(h, s) for s in h.running()}
            h.docker.images.get(newer).tag(tag)  # the tag now names a new build
            most_draining = 0

            def rolled_out() -> bool:
                nonlocal most_draining
                shards = daemon.state.observed.shards if daemon.state.observed else ()
                most_draining = max(most_draining, sum(s.state == "draining" for s in shards))
                running = h.running()
                return len(running) == 2 and all(_image_of(h, s) == newer for s in running)

            await _passes(daemon, rolled_out, 90)
            kinds = [e.kind for e in await daemon.events.recent(100)]
        assert set(old.values()) == {h.docker.images.get(heartbeat_image).id}
        assert most_draining == 1, "one at a time (max_at_once 1)"
        assert kinds.count("drain") >= 2 and kinds.count("stop") >= 2, kinds
    finally:
        h.cleanup()  # the containers first: an image in use cannot be removed
        h.docker.images.remove(tag, force=True)  # (the new build goes with its only tag)
        with contextlib.suppress(docker.errors.ImageNotFound):
            h.docker.images.remove(newer, force=True)


def _derived_image(h: Harness, base: str) -> str:
    """A new build of `base` (another image id, the same behaviour)."""
    dockerfile = f"FROM {base}\nLABEL chatscale.test.build={h.project}\n".encode()
    image, _ = h.docker.images.build(fileobj=io.BytesIO(dockerfile), rm=True)
    return str(image.id)


def _image_of(h: Harness, shard_id: str) -> str:
    return str(h.docker.containers.get(f"{h.project}-{shard_id}").attrs["Image"])


async def _passes(daemon: Daemon, done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"not within {seconds} s: {daemon.state.decisions[0]}"
        await daemon.reconcile()
        await asyncio.sleep(0.3)
