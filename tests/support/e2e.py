"""What the end-to-end tests share: the test config, the stand-in site's container, and the
record of the scenario's phase timings (printed, and kept in test-artifacts/)."""

from __future__ import annotations

import contextlib
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

import docker
import yaml

from support.procs import free_port, port_open, wait_for
from support.scenario import API_KEY, MAX_SESSIONS, Report, e2e_policy

SITE = "chatscale-fakesite"


def record_timings(artifacts: Path, mode: str, report: Report) -> None:
    data = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}",
        "timings_s": {k: round(v, 1) for k, v in report.timings.items()},
        "max_sessions_seen_on_one_shard": report.max_seen,
        "capacity_watch_reconnects": report.watch_errors,
        "peak_ready_shards": report.peak_shards,
        "responses_checked_against_registry": report.checked,
        "misrouted": len(report.misrouted),
    }
    (artifacts / f"e2e-{mode}.json").write_text(json.dumps(data, indent=2))
    print(f"\n== end-to-end ({mode}) ==\n{json.dumps(data, indent=2)}")


def e2e_config(root: Path) -> dict[str, Any]:
    """The shipped config.yaml with small shards and short windows for a 2-core machine."""
    config: dict[str, Any] = yaml.safe_load((root / "config.yaml").read_text())
    config["shard"].update(
        max_sessions=MAX_SESSIONS,
        stop_timeout=20,
        env={"API_KEY": API_KEY, "WHATSAPP_URL": f"http://{SITE}:9000", "SNAPSHOT_INTERVAL": "30"},
    )
    config["heartbeat"] = {"interval": 1, "timeout": 4}
    config["policy"].update(e2e_policy())
    config["reconcile"] = {"interval": 1, "leader_ttl": 5}
    config["nginx"]["reload"] = {"min_interval": 0.5, "max_delay": 2}
    return config


def rebuild_shard_image(
    client: docker.DockerClient, name: str = "chatscale-shard:latest", instructions: str = ""
) -> str:
    """A new build of the shard image under the same name (one label more: what a build after a
    change, or a pull of a new release, does; `instructions` may break it); its id. The image
    it replaces keeps its id."""
    text = f"FROM {name}\nLABEL chatscale.test.rollout={time.time()}\n{instructions}\n"
    dockerfile = text.encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), rm=True)
    image.tag(name)
    return str(image.id)


def start_site(
    client: docker.DockerClient,
    root: Path,
    published: bool = False,
    *,
    name: str = SITE,
    network: str = "chatscale",
    rotate: int = 120,
    heavy: bool = False,
    labels: dict[str, str] | None = None,
) -> str:
    """The stand-in site in a container on the fleet's network (`chatscale`), where the shards
    reach it as chatscale-fakesite:9000; returns its URL for the test: its IP on a bridge
    network, or a published loopback port (an overlay network is not reachable from the host).
    `heavy`: the page that loads like WhatsApp Web (tests/fakesite/README.md)."""
    port = free_port()
    with contextlib.suppress(docker.errors.NotFound):  # left by a run that was killed
        client.containers.get(name).remove(force=True)
    container = client.containers.run(
        "chatscale-shard:latest",
        [
            "python3",
            "-m",
            "fakesite",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--qr-rotate-seconds",
            str(rotate),
        ],
        name=name,
        detach=True,
        network=network,
        environment={"PYTHONPATH": "/app", **({"FAKESITE_HEAVY": "1"} if heavy else {})},
        volumes={str(root / "tests" / "fakesite"): {"bind": "/app/fakesite", "mode": "ro"}},
        ports={"9000/tcp": ("127.0.0.1", port)} if published else {},
        entrypoint=[],
        labels=labels or {},
    )
    if published:
        wait_for(lambda: port_open(port), 30, "the stand-in site container")
        return f"http://127.0.0.1:{port}"
    container.reload()
    ip = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    wait_for(lambda: port_open(9000, ip), 60, "the stand-in site container", 0.2)
    return f"http://{ip}:9000"
