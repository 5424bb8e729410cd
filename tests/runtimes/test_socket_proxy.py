"""The Docker socket proxy (nginx_templates/docker-socket-proxy.conf), run by a real nginx in
front of the real engine: the Docker runtime starts, lists, inspects and stops a shard through
it; calls the autoscaler never makes (exec, image pulls, volumes) are refused with 403."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from support.harness import Harness
from support.procs import free_port, port_open, require_binary, start, stop, wait_for

from autoscaler.engine.schedules import VALIDATION
from autoscaler.runtimes.docker import DockerRuntime, container_name
from chatscale_contract.configload import load_config

ROOT = Path(__file__).resolve().parents[2]


async def test_the_runtime_works_through_the_proxy_and_nothing_else_does(
    docker_harness: Harness, tmp_path: Path
) -> None:
    port = free_port()
    conf = (ROOT / "nginx_templates" / "docker-socket-proxy.conf").read_text()
    conf = conf.replace("listen 2375;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("/tmp/docker-socket-proxy", str(tmp_path / "proxy"))
    (tmp_path / "proxy.conf").write_text(conf)
    nginx = require_binary("nginx")
    proxy = start(
        [nginx, "-c", str(tmp_path / "proxy.conf"), "-g", "daemon off;"], tmp_path / "p.log"
    )
    try:
        wait_for(lambda: port_open(port), 10, "the socket proxy")
        client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}")
        config = load_config(docker_harness.write(docker_harness.config()), context=VALIDATION)
        runtime = DockerRuntime(config, client)
        await runtime.check()
        assert (await runtime.start("shard-1")).running
        assert [s.shard_id for s in await runtime.list_shards()] == ["shard-1"]
        assert await runtime.inspect("shard-1") is not None

        container = client.containers.get(container_name(config, "shard-1"))
        refused: list[Callable[[], object]] = [
            lambda: container.exec_run("true"),
            lambda: client.images.pull("busybox", tag="latest"),
            lambda: client.volumes.create("chatscale-proxy-test"),
            lambda: client.api.get_archive(container.name or "", "/etc/passwd"),
        ]
        for call in refused:
            with pytest.raises(docker.errors.APIError) as caught:
                call()
            assert caught.value.status_code == 403
            assert "socket proxy does not allow" in str(caught.value)

        await runtime.stop("shard-1", 5)
        assert await runtime.list_shards() == []
        client.close()
    finally:
        stop(proxy)
