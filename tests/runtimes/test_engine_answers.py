"""What the Docker runtimes make of the engine's answers, against a real Docker engine (no swarm
needed) and a port nothing listens on: an engine that does not answer is a RuntimeFailure (which
the observer reports as "runtime unreadable"), for both runtimes. The Swarm runtime's view of
shard.image: an image the engine lacks is "" (nodes pull it by name); an engine that fails to
answer is not taken to lack it."""

from __future__ import annotations

import time
from typing import Any

import docker
import pytest
from support.procs import free_port

from autoscaler.runtimes.base import RuntimeFailure
from autoscaler.runtimes.docker import DockerRuntime
from autoscaler.runtimes.swarm import SwarmRuntime
from chatscale_contract.config import Config

MISSING = "chatscale-test-no-such-image:none"


def dead_engine() -> docker.DockerClient:
    """A client of an engine that does not answer (TCP: a refused unix socket is left open by
    the SDK, which the suite's warnings-as-errors would then report)."""
    return docker.DockerClient(base_url=f"tcp://127.0.0.1:{free_port()}", version="1.41")


def runtime(client: Any, image: str = MISSING) -> SwarmRuntime:
    shard = {"image": image, "network": "fleet"}
    config = Config.model_validate({"runtime": {"kind": "swarm"}, "shard": shard})
    return SwarmRuntime(config, client)


async def test_an_engine_that_does_not_answer_is_a_runtime_failure() -> None:
    dead = dead_engine()
    try:
        with pytest.raises(RuntimeFailure, match="docker"):
            await DockerRuntime(Config.model_validate({}), dead).list_shards()
        with pytest.raises(RuntimeFailure, match="docker"):
            await runtime(dead).list_shards()
    finally:
        dead.close()


def test_an_image_the_engine_lacks_is_named_by_nothing(docker_client: Any) -> None:
    assert runtime(docker_client)._image_ref() == ""


def test_an_engine_that_fails_to_answer_keeps_the_last_answer(docker_client: Any) -> None:
    swarm = runtime(docker_client)
    swarm._image = ("sha256:before", time.monotonic() - 3600)  # read long ago: due again
    swarm._client = dead = dead_engine()
    try:
        assert swarm._image_ref() == "sha256:before", "not '' (services made would lack a label)"
        assert swarm._image[1] < time.monotonic() - 3000, "and it is asked again next time"
    finally:
        dead.close()


def test_with_no_answer_yet_the_failure_is_raised() -> None:
    dead = dead_engine()
    try:
        with pytest.raises(RuntimeFailure, match="docker"):
            runtime(dead)._image_ref()
    finally:
        dead.close()
