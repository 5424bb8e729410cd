"""The whole system for the stress and soak benchmarks: the shipped docker-compose.yml under a
project name of its own, with the stand-in site (tests/fakesite) in a container on the fleet's
network, and the calls the benchmarks make (through the nginx front, to the stand-in, to Redis,
to Docker).

Used by bench/bench_stress.py and bench/bench_soak.py. Like tests/e2e, the compose file is used
as shipped; an override mounts a benchmark config (max_sessions 50 by default, the shipped
5 s / 20 s heartbeat), publishes Redis on loopback for the readings, picks free host ports, and
renames what the shipped file names globally (the `chatscale` network, the autoscaler's
container) so the run cannot collide with a test fleet. `Stand.close` removes everything,
volumes included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
import docker  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
import yaml  # noqa: E402
from support.compose import IMAGES, Compose  # noqa: E402
from support.e2e import e2e_config, start_site  # noqa: E402
from support.procs import port_open, wait_for  # noqa: E402
from support.scenario import API_KEY  # noqa: E402

from chatscale_contract.keys import Keys  # noqa: E402

KEYS = Keys("cs:")
HEADERS = {"X-Api-Key": API_KEY}
MIB = 1024 * 1024
RECIPIENT = "15550009999"


def phone_of(index: int) -> str:
    """The account each session logs in as (distinct, so incoming messages can be addressed)."""
    return f"1555{index + 1:07d}"


def machine() -> dict[str, str]:
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPU {platform.machine()}, {mem:.1f} GiB RAM",
        "load_average_at_start": load,
    }


def header(stand: Stand, **fields: Any) -> dict[str, Any]:
    """The start of a benchmark's result: the machine, the images and the run's own fields."""
    return {
        **machine(),
        **fields,
        "config_keys_dropped_for_the_image": stand.pruned,
        "images": stand.images(),
    }


@dataclass
class StandConfig:
    project: str
    max_sessions: int = 50
    max_shards: int = 3
    heavy: bool = False
    recycle: dict[str, float] | None = None
    """policy.recycle (e.g. {"max_age": 1200}); None: off, as shipped."""


class Stand:
    """One compose project and its stand-in site. Create, then `await up()`; `close()` always."""

    def __init__(self, cfg: StandConfig) -> None:
        self.cfg = cfg
        self.project = cfg.project
        self.network = cfg.project
        self.site_name = f"{cfg.project}-fakesite"
        self.folder = Path(tempfile.mkdtemp(prefix=f"{cfg.project}-"))
        config = e2e_config(ROOT)
        config["shard"].update(
            max_sessions=cfg.max_sessions,
            network=self.network,
            labels={
                "com.docker.compose.project": cfg.project,
                "com.docker.compose.service": "shard",
                "com.docker.compose.oneoff": "False",
                "com.docker.compose.config-hash": "chatscale-shard",
            },
        )
        config["shard"]["env"]["WHATSAPP_URL"] = f"http://{self.site_name}:9000"
        config["runtime"]["project"] = cfg.project
        # The shipped heartbeat (5 s, dead after 20 s), not the e2e tests' 1 s / 4 s: on a
        # shared 2-core machine at a load average of 20-40 a busy shard misses 4 s (tried: two
        # shards of 43 and 50 sessions were declared dead and replaced while creating).
        config["heartbeat"] = {"interval": 5, "timeout": 20}
        config["policy"].update(
            min_shards=1,
            max_shards=cfg.max_shards,
            target_utilization=1.0,
            buffer={"slots": 1, "percent": 0},
            # No scale-in during a run: a drain would move sessions and blur the figures.
            scale_down={"stabilization": 3600, "max_step": 1},
        )
        if cfg.recycle:
            config["policy"]["recycle"] = cfg.recycle
        extra = {
            "services": {"autoscaler": {"container_name": f"{cfg.project}-autoscaler"}},
            "networks": {"chatscale": {"name": self.network}},
        }
        self.compose = Compose(self.folder, "v2", config, extra=extra)
        self.compose.env["COMPOSE_PROJECT_NAME"] = cfg.project
        self.pruned = prune_config(self.folder / "config.yaml", config)
        self.client = docker.from_env()
        self.site = ""
        self.redis: aioredis.Redis | None = None
        self.started = False
        self.up_future: asyncio.Future[None] | None = None

    # --- up and down ---------------------------------------------------------------------------

    def up(self) -> None:
        missing = [i for i in IMAGES if not self.client.images.list(name=i)]
        if missing:
            raise RuntimeError(f"images missing: {missing}; run scripts/build-images")
        self.started = True
        self.compose.run("up", "-d", "--no-build")
        wait_for(lambda: port_open(self.compose.ports["status"]), 180, "the status page", 0.5)
        self.site = self.start_site()
        self.redis = aioredis.Redis.from_url(self.compose.redis, decode_responses=True)

    def start_site(self) -> str:
        return start_site(
            self.client,
            ROOT,
            name=self.site_name,
            network=self.network,
            rotate=300,
            heavy=self.cfg.heavy,
            labels={"chatscale.bench": self.project},
        )

    async def start(self) -> None:
        """`up` in a worker thread; a cancel (Ctrl-C) waits for it in `close`, so nothing it
        starts is left behind."""
        self.up_future = asyncio.ensure_future(asyncio.to_thread(self.up))
        await asyncio.shield(self.up_future)

    async def close(self) -> None:
        if self.up_future is not None and not self.up_future.done():
            with contextlib.suppress(Exception):
                await self.up_future
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        with contextlib.suppress(docker.errors.DockerException):
            self.client.containers.get(self.site_name).remove(force=True)
        if self.started:
            with contextlib.suppress(Exception):
                logs = self.compose.run("logs", "--no-color", "autoscaler", check=False)
                (self.folder / "autoscaler.log").write_text(logs.stdout + logs.stderr)
            self.compose.run("down", "--remove-orphans", "-v", "-t", "20", check=False)
        # Shards the autoscaler started after compose last looked (or if its labels were off).
        for c in self.client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"}
        ):
            with contextlib.suppress(docker.errors.DockerException):
                c.remove(force=True)
        for n in self.client.networks.list(names=[self.network]):
            if n.name == self.network:
                with contextlib.suppress(docker.errors.DockerException):
                    n.remove()
        self.client.close()
        print(f"config, override and the autoscaler's log: {self.folder}", flush=True)

    # --- readings ------------------------------------------------------------------------------

    @property
    def r(self) -> aioredis.Redis:
        assert self.redis is not None
        return self.redis

    async def status(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.compose.status}/api/status") as resp:
            return dict(await resp.json())

    async def site_state(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.site}/api/state") as resp:
            return dict(await resp.json())

    async def beats(self) -> dict[str, dict[str, str]]:
        """shard id -> its heartbeat hash (only shards with a live lease)."""
        out: dict[str, dict[str, str]] = {}
        for shard_id in await self.r.zrange(KEYS.shards, 0, -1):
            raw = await self.r.hgetall(KEYS.shard(shard_id))
            if raw:
                out[shard_id] = raw
        return out

    async def owners(self, sids: list[str]) -> dict[str, str]:
        return {sid: await self.r.hget(KEYS.session(sid), "owner") or "" for sid in sids}

    def container_of(self, shard_id: str) -> str:
        return f"{self.project}-{shard_id}"

    def docker_stats(self) -> dict[str, tuple[float, float]]:
        """container name -> (memory MiB, CPU %) from one `docker stats --no-stream`."""
        done = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{json .}}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out: dict[str, tuple[float, float]] = {}
        for line in done.stdout.splitlines():
            row = json.loads(line)
            name = str(row["Name"])
            if not name.startswith(self.project):
                continue
            out[name] = (size_mib(row["MemUsage"].split("/")[0]), float(row["CPUPerc"].rstrip("%")))
        return out

    def images(self) -> dict[str, str]:
        """image -> its id and creation time, for the record."""
        out: dict[str, str] = {}
        for name in ("chatscale-autoscaler:latest", "chatscale-shard:latest"):
            with contextlib.suppress(docker.errors.DockerException):
                image = self.client.images.get(name)
                out[name] = f"{image.short_id} built {image.attrs['Created'][:19]}Z"
        return out

    async def recycle_events(self) -> list[dict[str, str]]:
        entries = await self.r.xrange(KEYS.events, "-", "+")
        return [fields for _, fields in entries if "recycl" in json.dumps(fields).lower()]

    # --- the client's calls ---------------------------------------------------------------------

    async def call(
        self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """A request through the nginx front; (0, {}) when no answer came."""
        try:
            async with http.request(
                method, self.compose.front + path, json=body, headers=HEADERS
            ) as r:
                ok_json = r.content_type == "application/json"
                data = await r.json(content_type=None) if ok_json else {}
                return r.status, data
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}

    async def listing(self, http: aiohttp.ClientSession) -> dict[str, str]:
        """session id -> status, fleet-wide, from one GET /api/sessions through the front."""
        out: dict[str, str] = {}
        offset: int | None = 0
        while offset is not None:
            code, data = await self.call(http, "GET", f"/api/sessions?limit=100&offset={offset}")
            if code != 200:
                return out
            for s in data["sessions"]:
                out[s["id"]] = str(s.get("status", ""))
            offset = data.get("next_offset")
        return out

    async def first_shard_routed(self, http: aiohttp.ClientSession, timeout: float) -> float:
        began = time.monotonic()

        async def ready() -> bool:
            try:
                status = await self.status(http)
                shards = [s for s in status["shards"] if s["state"] == "ready"]
                async with http.get(f"{self.compose.front}/__chatscale/config") as resp:
                    served = (await resp.json(content_type=None)).get("version")
            except (aiohttp.ClientError, ValueError, AttributeError, KeyError):
                return False
            ring = await self.r.get(KEYS.ring)
            routed = bool(ring and json.loads(ring)["shards"])
            return bool(shards) and served == status["nginx"]["applied_version"] and routed

        await until(ready, timeout, "the first shard ready and routed")
        return time.monotonic() - began

    async def create(self, http: aiohttp.ClientSession, sid: str, deadline: float) -> int:
        """PUT until placed (a 503 or no answer is retried as a client would); the tries."""
        tries = 0
        while True:
            tries += 1
            code, body = await self.call(http, "PUT", f"/api/sessions/{sid}", {})
            if code in (200, 201):
                return tries
            if code not in (0, 502, 503, 504) or time.monotonic() > deadline:
                raise RuntimeError(f"PUT {sid}: {code} {body}")
            await asyncio.sleep(1.0)

    async def log_in(
        self, http: aiohttp.ClientSession, sid: str, phone: str, deadline: float
    ) -> None:
        """Wait for SCAN_QR_CODE, read the QR through the front, scan it on the stand-in."""
        while True:
            code, view = await self.call(http, "GET", f"/api/sessions/{sid}")
            if code == 200 and view.get("status") == "SCAN_QR_CODE":
                code, qr = await self.call(http, "GET", f"/api/sessions/{sid}/qr?format=raw")
                if code == 200 and qr.get("qr"):
                    body = {"ref": qr["qr"], "phone": phone}
                    async with http.post(f"{self.site}/api/scan", json=body) as resp:
                        if resp.status == 200:
                            return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sid}: no scannable QR in time (last {code} {view})")
            await asyncio.sleep(1.5)

    async def send(self, http: aiohttp.ClientSession, sid: str, text: str) -> int:
        body = {"to": RECIPIENT, "text": text}
        code, _ = await self.call(http, "POST", f"/api/sessions/{sid}/messages", body)
        return code

    async def incoming(self, http: aiohttp.ClientSession, phone: str, text: str) -> int:
        body = {"to": phone, "from": RECIPIENT, "text": text}
        try:
            async with http.post(f"{self.site}/api/incoming", json=body) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def received(self, marker: str) -> int:
        """Incoming messages (event `message`) carrying `marker` in the outbox stream."""
        count = 0
        for _, fields in await self.r.xrange(KEYS.outbox, "-", "+"):
            blob = json.dumps(fields)
            if marker in blob and '"message"' in blob.replace('\\"', '"'):
                count += 1
        return count


def prune_config(path: Path, config: dict[str, Any]) -> list[str]:
    """Drop the keys the autoscaler image in use does not know yet (an image built before the
    config.yaml of this tree grew them); returns them, for the record."""
    image = "chatscale-autoscaler:latest"
    check = ["autoscaler", "check-config", "/c.yaml"]
    done = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{path}:/c.yaml:ro", image, *check],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dropped = re.findall(r": ([\w.]+): unknown key", done.stdout + done.stderr)
    for dotted in dropped:
        *parents, last = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node.pop(last, None)
    if dropped:
        path.write_text(yaml.safe_dump(config))
    return dropped


def size_mib(text: str) -> float:
    text = text.strip()
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / MIB, "kB": 1 / 1024}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text) / MIB


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
