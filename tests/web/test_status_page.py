"""The status page in real Chromium, and the JSON, metrics and health endpoints beside it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import async_playwright
from shard.browser import CHROMIUM_ARGS
from shard.settings import DEBIAN_CHROMIUM
from support.loop import Loop, make_config
from support.procs import free_port

from autoscaler.engine.cluster import Cluster, Node
from autoscaler.loop.auth import publish
from autoscaler.loop.daemon import Daemon
from autoscaler.web.status import init_app
from autoscaler.web.webhooks import public
from chatscale_contract.webhooks import Webhook

pytestmark = [pytest.mark.browser]


@pytest.fixture
async def fleet_daemon(loop: Loop) -> Daemon:
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2))
    await loop.converge(daemon, lambda: loop.beating(2), "2 beating shards")
    for sid in ("alice", "bob", "carol"):
        assert await loop.runtime.shard("shard-1").create(sid)

    def three() -> bool:
        return daemon.state.observed is not None and daemon.state.observed.sessions == 3

    await loop.converge(daemon, three, "3 sessions observed")
    return daemon


async def serve(daemon: Daemon) -> AsyncIterator[str]:
    runner = web.AppRunner(init_app(daemon))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def status_url(fleet_daemon: Daemon) -> AsyncIterator[str]:
    async for url in serve(fleet_daemon):
        yield url


async def test_status_page_shows_the_fleet(status_url: str, artifacts_dir: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=DEBIAN_CHROMIUM, args=list(CHROMIUM_ARGS)
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(status_url)
        assert await page.locator("#shard-count").inner_text() == "2"
        assert await page.locator("#sessions").inner_text() == "3"
        assert await page.locator("#desired").inner_text() == "2"
        rows = page.locator("tr.shard")
        assert await rows.count() == 2
        first = await rows.nth(0).inner_text()
        assert "shard-1" in first and "ready" in first and "3/5" in first
        assert await page.locator("#decisions tr").count() > 1
        assert "start" in await page.locator("#events").inner_text()
        await page.fill("input[name=session]", "alice")
        await page.click("text=find")
        route = await page.locator("#route").inner_text()
        assert "alice" in route and "Registry owner: shard-1" in route
        await page.goto(status_url)  # the lookup form is part of the page; back to the fleet
        await page.screenshot(path=str(artifacts_dir / "status-page.png"), full_page=True)
        await browser.close()
    assert (artifacts_dir / "status-page.png").stat().st_size > 10_000


async def test_json_metrics_and_health(status_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{status_url}/api/status") as resp:
            status = await resp.json()
        assert status["leader"] is True and status["fleet"]["sessions"] == 3
        assert [s["id"] for s in status["shards"]] == ["shard-1", "shard-2"]
        assert status["decisions"][0]["desired"] == 2
        async with http.get(f"{status_url}/api/route", params={"session": "alice"}) as resp:
            route = await resp.json()
        assert route["registry_owner"] == "shard-1" and route["routes_to"] in ("shard-1", "shard-2")
        async with http.get(f"{status_url}/api/route", params={"session": "Alice"}) as resp:
            assert resp.status == 400 and "lowercase" in (await resp.json())["error"]
        async with http.get(f"{status_url}/metrics") as resp:
            text = await resp.text()
        assert 'chatscale_shards{state="ready"} 2.0' in text
        assert "chatscale_sessions 3.0" in text and "chatscale_shards_desired 2.0" in text
        async with http.get(f"{status_url}/healthz") as resp:
            assert resp.status == 200


async def test_token_protects_everything_but_health(loop: Loop) -> None:
    config = make_config(loop.redis_url)
    config = config.model_copy(update={"status": config.status.model_copy(update={"token": "s3"})})
    daemon = await loop.daemon(config)
    await loop.step(daemon)
    async for url in serve(daemon):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/status") as resp:
                assert resp.status == 401
            async with http.get(f"{url}/api/status", headers={"Authorization": "Bearer s3"}) as r:
                assert r.status == 200
            async with http.get(f"{url}/", params={"token": "s3"}) as resp:
                assert resp.status == 200
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200


async def test_nodes_are_listed_with_their_free_memory(loop: Loop) -> None:
    gib = 1024**3
    loop.runtime.nodes = Cluster(
        (
            Node("n1", "alpha", True, True, 64 * gib, 20 * gib, role="manager"),
            Node("n2", "beta", False, True, 64 * gib),
        ),
        reservation=10 * gib,
    )
    daemon = await loop.daemon(make_config(loop.redis_url))
    await loop.step(daemon)
    async for url in serve(daemon):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/status") as resp:
                nodes = (await resp.json())["nodes"]
            async with http.get(url) as resp:
                page = await resp.text()
    assert [(n["hostname"], n["ready"], n["free_bytes"]) for n in nodes] == [
        ("alpha", True, 44 * gib),
        ("beta", False, 64 * gib),
    ]
    assert 'id="nodes"' in page and "alpha" in page and "down" in page


async def test_dead_letters_are_listed_and_replayed(fleet_daemon: Daemon, status_url: str) -> None:
    keys, client = fleet_daemon.keys, fleet_daemon.redis
    letter = {
        "event": "session.status",
        "session": "alice",
        "payload": '{"status":"WORKING"}',
        "metadata": "{}",
        "origin": "1764650000123-0",
        "url": "http://app.example:8000/hook",
        "error": "HTTP 503",
        "attempts": "10",
    }
    letter_id = await client.xadd(keys.dead_letters, letter)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{status_url}/api/webhooks") as resp:
            data = await resp.json()
        assert resp.status == 200 and data["dead"]["total"] == 1, data
        assert data["dead"]["letters"] == [{"id": letter_id, **letter, "session_receiver": False}]
        async with http.get(f"{status_url}/") as resp:
            assert letter_id in await resp.text(), "the page lists it"
        for body, status, words in (
            (b"{", 400, "body is not valid JSON"),
            (b'{"id": 5}', 400, 'body must be {"id"'),
            (b'{"id": "1-1"}', 404, "no dead letter '1-1'"),
            (b'{"id": "x-y"}', 400, "'x-y' is not a dead letter id"),
            (b'{"all": true, "id": "1-1"}', 400, 'body must be {"id"'),
        ):
            async with http.post(f"{status_url}/api/webhooks/replay", data=body) as resp:
                error = await resp.json()
            assert resp.status == status and words in error["error"], error
        async with http.get(f"{status_url}/api/webhooks?count=0") as resp:
            assert resp.status == 400 and "count must be" in (await resp.json())["error"]
        replay = f"{status_url}/api/webhooks/replay"
        async with http.post(replay, json={"id": letter_id}) as resp:
            refused = await resp.json()
        assert resp.status == 409 and "no longer configured" in refused["error"], refused
        hook = Webhook.model_validate({"url": letter["url"]})
        fleet_daemon.reconfigure(fleet_daemon.config.model_copy(update={"webhooks": [hook]}))
        async with http.post(replay, json={"id": letter_id}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"replayed": 1, "kept_unconfigured": 0}
    assert await client.xlen(keys.dead_letters) == 0
    ((_, again),) = await client.xrange(keys.outbox)
    assert again["only_url"] == letter["url"] and again["origin"] == letter["origin"]


def test_receiver_urls_are_shown_without_secrets() -> None:
    assert public("https://user:pw@hooks.example:8443/in?token=s3cret") == (
        "https://hooks.example:8443/in?..."
    )
    assert public("http://[::1]:9000/hook") == "http://[::1]:9000/hook"
    assert public("http://app:8000/chatscale/webhook") == "http://app:8000/chatscale/webhook"


async def test_the_generated_key_is_shown_and_keys_off_is_a_warning(loop: Loop) -> None:
    config = make_config(loop.redis_url)
    daemon = await loop.daemon(config)
    key = await publish(daemon.redis, daemon.keys, config)
    assert key is not None
    async for url in serve(daemon):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/") as resp:
                page = await resp.text()
            async with http.get(f"{url}/api/status") as resp:
                auth = (await resp.json())["auth"]
            off = config.model_copy(
                update={"auth": config.auth.model_copy(update={"enabled": False})}
            )
            await publish(daemon.redis, daemon.keys, off)
            async with http.get(f"{url}/") as resp:
                warned = await resp.text()
    assert f'<code id="generated-key">{key}</code>' in page
    assert '<p class="muted" id="keys">2 key(s);' in page
    assert auth == {"mode": "keys", "keys": 2, "generated_key": key}, "and the shards' own"
    assert 'id="keys-off"' in warned


async def test_the_last_hour_is_charted_and_repeated_decisions_folded(
    loop: Loop, artifacts_dir: Path
) -> None:
    """Sessions come and go over a few minutes (of the loop's clock): the page charts them as
    inline SVG (no script, nothing fetched), one point per 10 s sample, and the steady passes
    in between show as one decisions row with a count."""
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2))
    await loop.converge(daemon, lambda: loop.beating(2), "2 beating shards")
    for minute in range(4):
        if minute:
            assert await loop.runtime.shard(f"shard-{minute % 2 + 1}").create(f"m{minute}")
        for _ in range(200):  # 60 s at 0.3 s a pass
            await loop.step(daemon)
    samples = len(daemon.state.samples)
    assert samples >= 24, samples
    async for url in serve(daemon):
        await _charts_seen(url, samples, artifacts_dir)


async def _charts_seen(url: str, samples: int, artifacts_dir: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=DEBIAN_CHROMIUM, args=list(CHROMIUM_ARGS)
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        fetched: list[str] = []
        page.on("request", lambda request: fetched.append(request.url))
        await page.goto(url)
        lines = page.locator("#charts polyline[data-series=sessions]")
        assert await lines.get_attribute("data-points") == str(samples)
        assert await page.locator("#charts svg").count() == 3
        legend = await page.locator("#charts figcaption").first.inner_text()
        assert "sessions 3 " in legend and "capacity 10 " in legend, legend
        repeat = await page.locator("#decisions .repeat").first.inner_text()
        times = "\u00d7"
        assert repeat.startswith(times) and int(repeat[1:].split()[0]) > 10, repeat
        assert fetched == [url + "/"], f"the page fetched more than itself: {fetched}"
        await page.screenshot(path=str(artifacts_dir / "status-page-hour.png"), full_page=True)
        await browser.close()


async def test_a_rolling_update_shows_how_far_it_came(loop: Loop) -> None:
    """Two shards, one from an older image: the page says 1 of 2 current, why that one is
    outdated, and that the rollout is paused; the JSON says the same."""
    recycle = {"outdated": True, "paused": True}
    daemon = await loop.daemon(make_config(loop.redis_url, min_shards=2, recycle=recycle))
    await loop.converge(daemon, lambda: loop.beating(2), "2 beating shards")
    old = loop.runtime.shards["shard-1"]
    old.instance = dataclasses.replace(old.instance, image_changed=True)
    await loop.step(daemon)
    async for url in serve(daemon):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/status") as resp:
                status = await resp.json()
            async with http.get(url) as resp:
                page = await resp.text()
    assert {s["id"]: s["outdated_by"] for s in status["shards"]} == {
        "shard-1": "image",
        "shard-2": None,
    }
    rollout = status["rollout"]
    assert (rollout["current"], rollout["outdated"], rollout["paused"]) == (1, 1, True)
    assert "1 of 2 shards current, 1 to replace" in page and "paused" in page
    assert "outdated: older image" in page
