"""Bad ids, bad keys and bad bodies get a clear 4xx with a JSON body; nothing is created."""

from __future__ import annotations

import io
from collections.abc import Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from support.shards import API_KEY, Api, ShardFleet, ShardProc

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def shard(
    redis_server: str, site_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShardProc]:
    """One shard for the whole module: these tests only talk to its API."""
    fleet = ShardFleet(f"{redis_server}/1", site_url, tmp_path_factory.mktemp("input"))
    yield fleet.start("shard-1")
    fleet.stop_all()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/sessions/Alice", "session ids are lowercase; use 'alice'"),
        ("/api/sessions/-dash-first", "starting with a letter or digit"),
        ("/api/sessions/" + "a" * 65, "longer than 64"),
        ("/api/sessions/a%20b", "1-64 characters"),
        ("/api/sessions/caf%C3%A9", "1-64 characters"),
    ],
)
async def test_bad_session_ids(
    shard: ShardProc, http: aiohttp.ClientSession, path: str, message: str
) -> None:
    code, body, _ = await Api(http, shard.url).call("PUT", path, {})
    assert code == 400 and message in body["error"], body


@pytest.mark.parametrize("key", ["", "wrong", API_KEY + "x"])
async def test_bad_api_keys(shard: ShardProc, http: aiohttp.ClientSession, key: str) -> None:
    code, body, _ = await Api(http, shard.url, key=key).call("GET", "/api/sessions")
    assert code == 401 and body == {"error": "missing or wrong X-Api-Key", "status": 401}


async def test_health_and_metrics_need_no_key(
    shard: ShardProc, http: aiohttp.ClientSession
) -> None:
    api = Api(http, shard.url, key="")
    code, body, _ = await api.call("GET", "/health")
    assert code == 200 and body["shard"] == "shard-1" and body["capacity"] == 5
    code, text, _ = await api.call("GET", "/metrics")
    assert code == 200 and b"chatscale_shard_capacity 5.0" in text


async def raw_put(
    http: aiohttp.ClientSession, url: str, data: bytes
) -> tuple[int, dict[str, object]]:
    headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
    async with http.put(url, data=io.BytesIO(data), headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"{not json", 400, "body is not valid JSON"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        (b'{"drivr": "web"}', 400, "unknown field(s): drivr"),
        (b'{"driver": "telegram"}', 400, "unknown driver 'telegram'"),
        (b'{"driver": "web", "options": {"url": "http://x"}}', 400, "needs options.qr_selector"),
        (b'{"options": "yes"}', 400, "options must be an object"),
        (b'{"workspace_id": {"a": 1}}', 400, "workspace_id must be a string or a number"),
        (b'{"options": {"url": "ftp://x"}}', 400, "url must be http(s)"),
        (b"{" + b'"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', 413, "too large (limit 65536 bytes)"),
        (b"{" + b'"x": "' + b"a" * (70 * 1024) + b'"}', 413, "too large (limit 65536 bytes)"),
    ],
)
async def test_bad_bodies(
    shard: ShardProc,
    http: aiohttp.ClientSession,
    redis_server: str,
    data: bytes,
    code: int,
    message: str,
) -> None:
    status, body = await raw_put(http, f"{shard.url}/api/sessions/valid", data)
    assert status == code and message in str(body["error"]), body
    client = aioredis.Redis.from_url(f"{redis_server}/1")
    assert await client.exists("cs:session:valid") == 0, "a bad request must create nothing"
    await client.aclose()


async def test_bad_message_requests(shard: ShardProc, http: aiohttp.ClientSession) -> None:
    api = Api(http, shard.url)
    code, body, _ = await api.call(
        "POST", "/api/sessions/nobody/messages", {"to": "1", "text": "x"}
    )
    assert code == 404 and body["error"] == "no session 'nobody'"
    await api.call("PUT", "/api/sessions/m1", {})
    code, body, _ = await api.call("POST", "/api/sessions/m1/messages", {"text": "x"})
    assert code == 400 and "to must be" in body["error"]
    code, body, _ = await api.call(
        "POST", "/api/sessions/m1/messages", {"to": "123456", "text": ""}
    )
    assert code == 400 and "text must be" in body["error"]
    code, body, _ = await api.call(
        "POST", "/api/sessions/m1/messages", {"to": "123456", "text": "x"}
    )
    assert code == 409 and "not WORKING" in body["error"]
    code, body, _ = await api.call("GET", "/api/sessions/m1/qr?format=gif")
    assert code == 400 and "format must be" in body["error"]


async def test_unknown_routes_and_methods_answer_json(
    shard: ShardProc, http: aiohttp.ClientSession
) -> None:
    api = Api(http, shard.url)
    code, body, _ = await api.call("GET", "/nope")
    assert code == 404 and body["status"] == 404
    code, body, _ = await api.call("PATCH", "/api/sessions/x")
    assert code == 405 and body["status"] == 405


async def test_legacy_create_form(shard: ShardProc, http: aiohttp.ClientSession) -> None:
    api = Api(http, shard.url, key="")
    code, body, _ = await api.call("POST", "/api/sessions", {"session_id": "old1", "api_key": "no"})
    assert code == 401
    form = {"session_id": "old1", "workspace_id": 3, "account_id": "a", "api_key": API_KEY}
    code, body, _ = await api.call("POST", "/api/sessions", form)
    assert code == 201 and body["id"] == "old1" and body["workspace_id"] == "3", body
    code, body, _ = await api.call(
        "POST", "/api/sessions", {"session_id": "Old2", "api_key": API_KEY}
    )
    assert code == 400 and "lowercase" in body["error"]


@pytest.mark.parametrize(
    ("path", "size", "limit", "waha"),
    [
        ("/api/sessions/alice/messages", 40 * 1024, 32 * 1024, False),
        ("/api/keys", 5 * 1024, 4 * 1024, False),
        ("/waha/api/sendText", 40 * 1024, 32 * 1024, True),
        ("/waha/api/sessions", 70 * 1024, 64 * 1024, True),
    ],
)
async def test_each_route_has_its_own_body_limit(
    shard: ShardProc, http: aiohttp.ClientSession, path: str, size: int, limit: int, waha: bool
) -> None:
    """Bodies over a route's limit are refused before anything is read into a session: 413,
    in the surface's own error form, naming the limit."""
    api = Api(http, shard.url)
    if "/messages" in path:  # a send is checked by the session's owner: one must exist
        assert (await api.call("PUT", "/api/sessions/alice", {}))[0] in (200, 201)
    body = {"text": "x" * size, "to": "15550001111", "name": "k", "chatId": "1@c.us"}
    code, answer, _ = await api.call("POST", path, body)
    assert code == 413, answer
    message = answer["message"] if waha else answer["error"]
    assert f"request body too large (limit {limit} bytes)" == message, answer
    if waha:
        assert answer["statusCode"] == 413 and answer["error"] == "Request Entity Too Large"
