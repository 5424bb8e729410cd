"""Shard processes for tests: real `shard` services with real Chromium, and a client for them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from chatscale_contract import proctree
from chatscale_contract.keys import Keys
from chatscale_contract.ring import Ring
from support.procs import free_port, kill_group, port_open, start, wait_for

API_KEY = "test-key"
SHARD_BIN = str(Path(sys.executable).with_name("shard"))


@dataclass
class ShardProc:
    shard_id: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    tag: str
    """Value of TAG in this process's environment (and its browser's)."""

    def processes(self) -> list[proctree.Proc]:
        """The shard's process and everything below it (its driver, Chromium and helpers)."""
        return proctree.marked_tree(TAG, self.tag)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sigkill(self) -> None:
        """Kill only the shard's own process, as a crash would; its children must not survive."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def sigterm(self, timeout: float = 60) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)


@dataclass
class ShardFleet:
    """Starts shard processes against one Redis and one site; stops them all at the end."""

    redis_url: str
    site_url: str
    folder: Path
    procs: list[ShardProc] = field(default_factory=list)

    def start(self, shard_id: str, wait: bool = True, **env: str) -> ShardProc:
        port = free_port()
        settings = {
            "SHARD_ID": shard_id,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "REDIS_URL": self.redis_url,
            "WHATSAPP_URL": self.site_url,
            "API_KEY": API_KEY,
            "MAX_SESSIONS": "5",
            "HEARTBEAT_INTERVAL": "1",
            "HEARTBEAT_TIMEOUT": "4",
            "SNAPSHOT_INTERVAL": "30",
            "STOP_TIMEOUT": "20",
            **env,
        }
        log = self.folder / f"{shard_id}-{port}.log"
        tag = f"{shard_id}-{port}-{time.monotonic_ns()}"
        proc = start([SHARD_BIN], log, {**settings, TAG: tag})
        shard = ShardProc(shard_id, port, proc, log, tag)
        self.procs.append(shard)
        if wait:
            wait_for(lambda: port_open(port), 30, f"{shard_id} to listen (log: {log})")
        return shard

    def stop_all(self) -> None:
        """SIGTERM each shard process (only it, as `docker stop` would), then kill leftovers."""
        for shard in self.procs:
            if shard.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
                    shard.sigterm(timeout=30)
            kill_group(shard.proc)
            proctree.kill(shard.processes())


TAG = "CHATSCALE_TEST_TAG"
"""Set in each test shard's environment; with proctree it finds the shard's whole process tree."""


class Api:
    """A small client for the shard (or nginx front) API."""

    def __init__(self, http: aiohttp.ClientSession, base: str, key: str = API_KEY):
        self.http = http
        self.base = base
        self.key = key

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        all_headers = {"X-Api-Key": self.key, **(headers or {})}
        async with self.http.request(
            method, self.base + path, json=body, headers=all_headers
        ) as resp:
            raw = await resp.read()
            content = resp.headers.get("Content-Type", "")
            data: Any = raw
            if content.startswith("application/json"):
                data = await resp.json()
            return resp.status, data, dict(resp.headers)

    async def wait_status(
        self, sid: str, status: str, timeout: float = 60, shard: str | None = None
    ) -> dict[str, Any]:
        """Poll until `sid` has `status` (on `shard`, if given); return its view."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            code, last, _ = await self.call("GET", f"/api/sessions/{sid}")
            if code == 200 and last["status"] == status and shard in (None, last["shard"]):
                return dict(last)
            await asyncio.sleep(0.25)
        raise TimeoutError(f"{sid} did not reach {status} in {timeout:g} s; last: {last}")


async def scan(http: aiohttp.ClientSession, site: str, ref: str, phone: str) -> None:
    """The stand-in's "phone scan" of a QR code."""
    async with http.post(f"{site}/api/scan", json={"ref": ref, "phone": phone}) as resp:
        assert resp.status == 200, await resp.text()


async def log_in(
    api: Api,
    http: aiohttp.ClientSession,
    site: str,
    sid: str,
    phone: str,
    body: dict[str, Any] | None = None,
    created: tuple[int, ...] = (201,),
) -> None:
    """Create `sid` (PUT `body`; its answer one of `created`), read its QR, "scan" it with the
    stand-in's phone endpoint as `phone`, and wait until it is WORKING."""
    code, answer, _ = await api.call("PUT", f"/api/sessions/{sid}", body or {})
    assert code in created, answer
    await api.wait_status(sid, "SCAN_QR_CODE")
    code, qr, _ = await api.call("GET", f"/api/sessions/{sid}/qr?format=raw")
    assert code == 200, qr
    await scan(http, site, qr["qr"], phone)
    await api.wait_status(sid, "WORKING")


async def site_state(http: aiohttp.ClientSession, site: str) -> dict[str, Any]:
    async with http.get(f"{site}/api/state") as resp:
        return dict(await resp.json())


async def publish_ring(redis_url: str, shards: list[ShardProc]) -> Ring:
    """Publish a ring of `shards` as the autoscaler would (key prefix cs:); returns it."""
    members = [(s.shard_id, f"127.0.0.1:{s.port}") for s in shards]
    client = aioredis.Redis.from_url(redis_url)
    ring_json = {"version": "test", "shards": [{"id": i, "addr": a} for i, a in members]}
    await client.set(Keys("cs:").ring, json.dumps(ring_json))
    await client.aclose()
    return Ring(members)


def ids_owned_by(ring: Ring, shard_id: str, count: int, prefix: str) -> list[str]:
    """`count` session ids (`prefix` + a number) that `ring` gives to `shard_id`."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        sid = f"{prefix}{n}"
        if ring.owner(sid) == shard_id:
            found.append(sid)
        n += 1
    return found
