"""Helpers for the nginx tests: the running front, the fake shards, settings in one folder.

Fixtures that start the processes live in conftest.py; this module holds what tests also import.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from autoscaler.front.apply import ApplyResult, NginxApplier
from autoscaler.front.render import render
from autoscaler.front.table import RouteShard, RouteTable
from chatscale_contract.config import NginxSettings
from support.procs import free_port, require_binary

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "nginx_templates"
UPSTREAM_SERVER = Path(__file__).with_name("upstream_server.py")
CONCURRENCY = 32
SHARDS = 8
"""Fake shards shard-1 .. shard-8 the upstream helper serves."""


@dataclass(frozen=True)
class Upstreams:
    addrs: Mapping[str, str]
    """shard id -> "127.0.0.1:<port>" of every fake shard."""

    def shard(self, shard_id: str, in_ring: bool = True, accepting: bool = True) -> RouteShard:
        return RouteShard(shard_id, self.addrs[shard_id], in_ring, accepting)

    def shards(self, count: int) -> tuple[RouteShard, ...]:
        return tuple(self.shard(f"shard-{n}") for n in range(1, count + 1))


class NoReload:
    """Used before nginx runs: the first config is installed, then nginx is started on it."""

    async def reload(self) -> None:
        return None


@dataclass
class Front:
    """A running test-owned nginx and the applier that drives it."""

    settings: NginxSettings
    applier: NginxApplier
    url: str
    folder: Path
    template_dir: Path = TEMPLATES
    served: RouteTable | None = field(default=None)

    async def serve(self, table: RouteTable) -> ApplyResult:
        """Render, apply and confirm `table`; fails the test if any step fails."""
        result = await self.applier.apply(self.render(table), table.version)
        assert result.ok, result.error
        self.served = table
        return result

    def render(self, table: RouteTable) -> str:
        return render(table, self.settings, self.template_dir)

    async def version(self) -> str:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"{self.url}/__chatscale/config") as resp,
        ):
            body = await resp.json()
            return str(body["version"])

    def error_log(self) -> str:
        path = Path(self.settings.error_log)
        return path.read_text() if path.exists() else ""


def nginx_settings(folder: Path, **overrides: object) -> NginxSettings:
    """Settings placing every nginx file in `folder`, small timeouts for tests."""
    values: dict[str, object] = {
        "binary": require_binary("nginx"),
        "template_dir": str(TEMPLATES),
        "config_path": str(folder / "conf" / "nginx.conf"),
        "pid_path": str(folder / "nginx.pid"),
        "runtime_dir": str(folder / "run"),
        "access_log": str(folder / "access.log"),
        "error_log": str(folder / "error.log"),
        "listen": free_port(),
        "waha_listen": free_port(),
        "worker_processes": 2,
        "worker_shutdown_timeout": 5,
        "connect_timeout": 1,
        "read_timeout": 10,
    }
    return NginxSettings.model_validate({**values, **overrides})


@contextlib.contextmanager
def nginx_folder() -> Iterator[Path]:
    """A world-traversable folder for one nginx (pytest's tmp folders are 0700 for root)."""
    folder = Path(tempfile.mkdtemp(prefix="chatscale-nginx-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def shard_for(
    http: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> str:
    """GET `url` through the front; the X-Shard-Id of the shard that answered."""
    async with http.get(url, headers=headers, params=params) as resp:
        await resp.read()
        assert resp.status == 200, f"{url}: {resp.status}"
        return resp.headers["X-Shard-Id"]


def session_ids(count: int, seed: int) -> list[str]:
    """Canonical ids of the shapes clients use: uuids, numbers, words with - and _."""
    rng = random.Random(seed)
    shapes = [
        lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        lambda: str(rng.randrange(10**9)),
        lambda: f"user_{rng.randrange(10**6)}-wa",
        lambda: "a" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789_-", k=63)),
    ]
    ids: set[str] = set()
    while len(ids) < count:
        ids.add(rng.choice(shapes)())
    return sorted(ids)


async def routes(front: Front, ids: list[str]) -> dict[str, str]:
    """Shard that answered a GET /api/sessions/{id}/status for each id."""
    limit = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as http:

        async def one(sid: str) -> tuple[str, str]:
            async with limit:
                return sid, await shard_for(http, f"{front.url}/api/sessions/{sid}/status")

        return dict(await asyncio.gather(*(one(sid) for sid in ids)))
