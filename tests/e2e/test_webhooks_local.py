"""Webhooks from the running system: `autoscaler run` (local runtime, real shards and Chromium,
real nginx) delivers each session's status changes to the receivers in config.yaml, signed, and
shows its counts on the status API. The delivery guarantees themselves (a receiver down, a shard
SIGKILLed, dead letters) are proven in tests/shard/test_events.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from support.localsystem import local_system
from support.receiver import KEY, Receiver
from support.scenario import API_KEY

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_the_running_autoscaler_delivers_session_events(
    tmp_path: Path, redis_url: str, site_url: str, receiver: Receiver
) -> None:
    hooks = [{"url": receiver.url, "hmac": {"key": KEY}}]
    with local_system(tmp_path, redis_url, site_url, "hooks", webhooks=hooks) as system:
        system.wait_front_holds()
        headers = {"X-Api-Key": API_KEY}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            url = f"{system.front}/api/sessions/hooked"
            async with http.put(url, json={"account_id": "a7"}, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
        deadline = time.monotonic() + 60
        while receiver.statuses("hooked") != ["STARTING", "SCAN_QR_CODE"]:
            assert time.monotonic() < deadline, receiver.got
            await asyncio.sleep(0.2)
        assert receiver.got[0]["metadata"] == {"workspace_id": "", "account_id": "a7"}
        # The receiver has both; the autoscaler counts the second once it read the answer.
        deadline = time.monotonic() + 10
        while (webhooks := system.status()["webhooks"])["here"]["delivered"] < 2:
            assert time.monotonic() < deadline, webhooks
            await asyncio.sleep(0.2)
        assert webhooks["receivers"] == [{"url": receiver.url, "events": ["session.status"]}]
        assert webhooks["here"]["delivered"] == 2 and webhooks["dead"]["total"] == 0
        assert "key" not in str(webhooks["receivers"]), "keys are not shown"
