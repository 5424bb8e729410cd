"""Where shards run: the `Runtime` protocol (base) and its implementations, one module each."""

from __future__ import annotations

from autoscaler.runtimes.base import Runtime
from chatscale_contract.config import Config


def make_runtime(config: Config) -> Runtime:
    """The runtime `config.runtime.kind` names. Imported lazily: a local deployment needs
    neither the docker SDK loaded nor a Docker engine."""
    if config.runtime.kind == "local":
        from autoscaler.runtimes.local import LocalRuntime

        return LocalRuntime(config)
    if config.runtime.kind == "swarm":
        from autoscaler.runtimes.swarm import SwarmRuntime

        return SwarmRuntime(config)
    from autoscaler.runtimes.docker import DockerRuntime

    return DockerRuntime(config)
