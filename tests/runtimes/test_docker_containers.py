"""What the Docker runtime gives every shard container (real Docker engine)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Iterable

import docker
import pytest
from support.harness import Harness, passes

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
            await passes(daemon, lambda: h.running() == ["shard-1", "shard-2"], 40)
            old = {s: _image_of(h, s) for s in h.running()}
            h.docker.images.get(newer).tag(tag)  # the tag now names a new build
            most_draining = 0

            def rolled_out() -> bool:
                nonlocal most_draining
                shards = daemon.state.observed.shards if daemon.state.observed else ()
                most_draining = max(most_draining, sum(s.state == "draining" for s in shards))
                running = h.running()
                return len(running) == 2 and all(_image_of(h, s) == newer for s in running)

            await passes(daemon, rolled_out, 90)
            kinds = [e.kind for e in await daemon.events.recent(100)]
        assert set(old.values()) == {h.docker.images.get(heartbeat_image).id}
        assert most_draining == 1, "one at a time (max_at_once 1)"
        assert kinds.count("drain") >= 2 and kinds.count("stop") >= 2, kinds
    finally:
        h.cleanup()  # the containers first: an image in use cannot be removed
        h.docker.images.remove(tag, force=True)  # (the new build goes with its only tag)
        with contextlib.suppress(docker.errors.ImageNotFound):
            h.docker.images.remove(newer, force=True)


# Builds whose shard never comes up: it exits at once (a crash loop: dead, replaced, dead), or
# it runs and never heartbeats (starting until the boot timeout, then dead and replaced).
BROKEN = {
    "exits at once": 'ENTRYPOINT ["sh", "-c", "exit 3"]',
    "never heartbeats": 'CMD ["sleep", "infinity"]',
}


@pytest.mark.parametrize("broken", list(BROKEN))
async def test_a_broken_new_image_holds_the_rollout_and_the_old_shards_keep_serving(
    docker_harness: Harness, heartbeat_image: str, broken: str
) -> None:
    """The tag re-pointed to a build whose shard never comes up: the extra shard started first
    (recycle.max_surge) never gets ready, so no old shard is drained. Over many passes both old
    containers keep running the old image with their sessions, and the plan says the rollout
    is held."""
    h = docker_harness
    tag = f"chatscale-rollout-{h.project}:test"
    bad = ""
    try:
        h.docker.images.get(heartbeat_image).tag(tag)
        bad = _derived_image(h, heartbeat_image, BROKEN[broken])
        settings = h.config(min_shards=2, recycle={"outdated": True})
        settings["shard"] |= {"image": tag, "boot_timeout": 10}
        config = load_config(h.write(settings))
        assert config.policy.recycle.max_surge == 1, "the default is what is tested"
        async with Daemon(config) as daemon:
            await passes(daemon, lambda: h.beating(2), 40)
            assert h.create(["held-a", "held-b", "held-c"]) == []
            old = {s: h.identity(s) for s in ("shard-1", "shard-2")}
            old_image = h.docker.images.get(heartbeat_image).id
            h.docker.images.get(bad).tag(tag)  # the tag now names the broken build
            reasons: set[str] = set()
            tried: set[str] = set()
            # Watched until the new shard was found dead and the plan says the rollout is held
            # (boot_timeout 10 s), and for 15 s at least: many passes that drain nothing.
            start = time.monotonic()
            seen = False
            while not seen or time.monotonic() < start + 15:
                assert time.monotonic() < start + 60, f"never held: {sorted(reasons)}"
                decision = await daemon.reconcile()
                if decision is not None:
                    reasons |= set(decision.plan.reasons)
                assert {s: h.identity(s) for s in old} == old, "an old shard was stopped"
                assert {_image_of(h, s) for s in old} == {old_image}
                shards = daemon.state.observed.shards if daemon.state.observed else ()
                states = {v.id: v.state for v in shards}
                assert states["shard-1"] == states["shard-2"] == "ready", states
                tried |= _images_but(h, old)
                seen = _held(reasons) and await _replaced(daemon, set(old))
                await asyncio.sleep(0.3)
            events = await daemon.events.recent(500)
        assert h.owned("shard-1") + h.owned("shard-2") == 3, "the old shards keep their sessions"
        assert tried == {bad}, "the new shard ran the new (broken) image"
        assert not [e for e in events if e.kind == "drain"], "no old shard drained"
        assert _held(reasons), sorted(reasons)
    finally:
        h.cleanup()  # the containers first: an image in use cannot be removed
        with contextlib.suppress(docker.errors.ImageNotFound):
            h.docker.images.remove(tag, force=True)
        if bad:
            with contextlib.suppress(docker.errors.ImageNotFound):
                h.docker.images.remove(bad, force=True)


def _held(reasons: set[str]) -> bool:
    return any(r.startswith("rollout held:") and "shard-3" in r for r in reasons)


async def _replaced(daemon: Daemon, old: set[str]) -> bool:
    """The new shard was found dead and replaced."""
    events = await daemon.events.recent(500)
    return any(e.kind == "replace" and e.shard not in old for e in events)


def _derived_image(h: Harness, base: str, line: str = "") -> str:
    """A new build of `base` (another image id; the same behaviour unless `line` changes it)."""
    dockerfile = f"FROM {base}\nLABEL chatscale.test.build={h.project}\n{line}\n".encode()
    image, _ = h.docker.images.build(fileobj=io.BytesIO(dockerfile), rm=True, forcerm=True)
    return str(image.id)


def _image_of(h: Harness, shard_id: str) -> str:
    return str(h.docker.containers.get(f"{h.project}-{shard_id}").attrs["Image"])


def _images_but(h: Harness, shard_ids: Iterable[str]) -> set[str]:
    """The image ids of the project's other shard containers, running or not (a sparse list:
    a container replaced meanwhile cannot make it fail)."""
    label = f"chatscale.project={h.project}"
    found = h.docker.containers.list(all=True, sparse=True, filters={"label": label})
    skip = set(shard_ids)
    return {
        str(c.attrs["ImageID"]) for c in found if c.attrs["Labels"]["chatscale.shard"] not in skip
    }
