"""Waking from zero shards with Docker: `docker compose up` of the shipped compose file with a
policy that lets the fleet sit at zero; one create through the front, sent once, is held by the
activator (in the autoscaler's container) while the first shard container starts, and answered
201; the session then shows its QR code. (The same without Docker, and the other activator
cases: tests/activator/test_wake.py.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from support.compose import compose_system
from support.e2e import e2e_config, start_site
from support.procs import port_open, wait_for
from support.scenario import API_KEY

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with http.get(url, headers={"X-Api-Key": API_KEY}) as resp:
            return resp.status, await resp.json(content_type=None)
    except aiohttp.ClientError:
        return 0, None


async def test_compose_wakes_from_zero(tmp_path: Path) -> None:
    config = e2e_config(ROOT)
    config["policy"].update(min_shards=0, buffer={"slots": 0, "percent": 0})
    with compose_system(tmp_path, "v2", config) as compose:
        compose.run("up", "-d", "--no-build")
        wait_for(lambda: port_open(compose.ports["status"]), 120, "the status page")
        start_site(docker.from_env(), ROOT)
        timeout = aiohttp.ClientTimeout(total=150)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await _until_front_holds(http, compose.status, compose.front)
            status = (await get_json(http, f"{compose.status}/api/status"))[1]
            assert status["shards"] == [], "the fleet should start at zero"

            began = time.monotonic()
            headers = {"X-Api-Key": API_KEY}
            url = f"{compose.front}/api/sessions/wake-1"
            async with http.put(url, json={}, headers=headers) as resp:
                code, body = resp.status, await resp.json(content_type=None)
                held = resp.headers.get("X-Chatscale-Held")
            took = time.monotonic() - began
            assert code == 201, body
            assert body["shard"] == "shard-1" and held is not None
            while True:
                code, view = await get_json(http, url)
                if code == 200 and view["status"] == "SCAN_QR_CODE":
                    break
                assert time.monotonic() - began < 90, f"no QR code: {code} {view}"
                await asyncio.sleep(0.3)
            print(
                f"\ncompose from zero: 201 in {took:.2f} s, QR in {time.monotonic() - began:.2f} s"
            )
            status = (await get_json(http, f"{compose.status}/api/status"))[1]
            assert status["activator"]["here"]["wakeups"] == 1


async def _until_front_holds(http: aiohttp.ClientSession, status_url: str, front: str) -> None:
    """Until the front serves the config the autoscaler published, and it names an activator."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, status = await get_json(http, f"{status_url}/api/status")
        _, served = await get_json(http, f"{front}/__chatscale/config")
        if status and served and status["activator"]["live"]:
            fronts = status["nginx"]["fronts"]
            if fronts and all(f["current"] for f in fronts):
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("the front never served a config with the activator")
