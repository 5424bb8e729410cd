"""`docker compose` (v1 or v2) of the repository's compose file plus a test override: a test
config mounted into the autoscaler and the front, Redis published on loopback for the test's
registry checks, free host ports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import yaml

from support.e2e import SITE
from support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]

COMPOSE = {
    "v1": [shutil.which("docker-compose") or "docker-compose"],  # Debian's 1.29
    "v2": ["docker", "compose"],  # the plugin scripts/setup-test-env installs
}
IMAGES = (
    "chatscale-shard:latest",
    "chatscale-autoscaler:latest",
    "chatscale-redis:offline",
)


class Compose:
    """Compose (v1 or v2) for the repository's compose file plus a test override."""

    def __init__(
        self,
        tmp_path: Path,
        version: str,
        config: dict[str, Any],
        engine: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        """`engine`: the Docker engine's socket path, when not the machine's; `extra`: more
        of the test's compose override, e.g. {"networks": {"chatscale": {...}}}."""
        self.folder = tmp_path
        self.version = version
        self.ports = {
            "front": free_port(),
            "waha": free_port(),
            "status": free_port(),
            "redis": free_port(),
        }
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        override = {
            "services": {
                "redis": {"ports": [f"127.0.0.1:{self.ports['redis']}:6379"]},
                "autoscaler": {"volumes": [f"{config_path}:/etc/chatscale/config.yaml:ro"]},
                "nginx": {"volumes": [f"{config_path}:/etc/chatscale/config.yaml:ro"]},
            }
        }
        if engine is not None:
            socket = f"{engine}:/var/run/docker.sock"
            override["services"]["autoscaler"]["volumes"].append(socket)
        for section, entries in (extra or {}).items():
            for name, values in entries.items():
                override.setdefault(section, {}).setdefault(name, {}).update(values)
        (tmp_path / "override.yml").write_text(json.dumps(override))
        self.env = {
            **os.environ,
            "REDIS_IMAGE": "chatscale-redis:offline",
            "FRONT_PORT": str(self.ports["front"]),
            "WAHA_PORT": str(self.ports["waha"]),
            "STATUS_PORT": str(self.ports["status"]),
            "COMPOSE_PROJECT_NAME": "chatscale",
        }
        if engine is not None:
            self.env["DOCKER_HOST"] = f"unix://{engine}"
        self.argv = [
            *COMPOSE[version],
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(tmp_path / "override.yml"),
        ]
        self.front = f"http://127.0.0.1:{self.ports['front']}"
        self.waha = f"http://127.0.0.1:{self.ports['waha']}"
        self.status = f"http://127.0.0.1:{self.ports['status']}"
        self.redis = f"redis://127.0.0.1:{self.ports['redis']}/0"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.argv, *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done

    def down(self) -> None:
        for service in ("autoscaler", "nginx"):  # (nginx's access and error logs go there)
            logs = self.run("logs", "--no-color", service, check=False)
            (self.folder / f"{service}.log").write_text(logs.stdout + logs.stderr)
        self.run("down", "--remove-orphans", "-v", "-t", "30", check=False)


@contextlib.contextmanager
def compose_system(
    folder: Path,
    version: str,
    config: dict[str, Any],
    engine: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[Compose]:
    """A Compose for `config` (not up yet) on the machine's engine or on `engine` (a socket
    path); on the way out the stand-in site's container is removed and everything is brought
    down, volumes included."""
    client = docker.DockerClient(base_url=f"unix://{engine}") if engine else docker.from_env()
    missing = [i for i in IMAGES if not client.images.list(name=i)]
    if missing:
        raise RuntimeError(f"images missing: {missing}; run scripts/build-images --with-services")
    leftovers = client.containers.list(all=True, filters={"label": "chatscale.project=chatscale"})
    assert not leftovers, f"a chatscale fleet already runs here: {[c.name for c in leftovers]}"
    system = Compose(folder, version, config, engine, extra)
    try:
        yield system
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.containers.get(SITE).remove(force=True)
        system.down()
        client.close()
