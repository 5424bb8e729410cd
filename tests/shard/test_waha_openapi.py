"""Real answers of the WAHA-compatible API (a real shard, Redis, Chromium, the stand-in site),
each request and answer checked against the document it serves at /openapi.json with
openapi-core; every operation of the document is tried, its errors too."""

from __future__ import annotations

import aiohttp
import pytest
from shard.waha.routes import openapi_document
from support.openapicheck import Checked, operations
from support.shards import ShardFleet, scan

pytestmark = [pytest.mark.browser]
JSON = {"Accept": "application/json"}


async def test_real_answers_match_the_waha_document(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str
) -> None:
    document = openapi_document()
    api = Checked(http, fleet.start("shard-1").url + "/waha", document)
    assert await api.call("GET", "/openapi.json", key=None) == (200, document), "as written"
    assert (await api.call("GET", "/api/version"))[0] == 200
    assert (await api.call("GET", "/api/server/version"))[0] == 200

    hooks = [{"url": "http://127.0.0.1:9/h", "events": ["message"], "hmac": {"key": "k"}}]
    config = {"metadata": {"user": "7"}, "webhooks": hooks}
    assert (await api.call("POST", "/api/sessions", {"name": "Ada", "config": config}))[0] == 201
    assert (await api.call("POST", "/api/sessions", {"name": "Ada"}))[0] == 422
    assert (await api.call("POST", "/api/sessions", {"name": "idle", "start": False}))[0] == 201
    assert (await api.call("GET", "/api/sessions?all=true"))[0] == 200
    assert (await api.call("GET", "/api/sessions"))[0] == 200
    await api.until("Ada", "SCAN_QR_CODE")
    code, raw = await api.call("GET", "/api/Ada/auth/qr?format=raw")
    assert code == 200
    assert (await api.call("GET", "/api/Ada/auth/qr", headers=JSON))[0] == 200
    assert (await api.call("GET", "/api/Ada/auth/qr"))[0] == 200
    assert (await api.call("GET", "/api/screenshot?session=Ada"))[0] == 200
    assert (await api.call("GET", "/api/screenshot?session=Ada", headers=JSON))[0] == 200
    assert (await api.call("GET", "/api/sessions/Ada/me"))[0] == 200
    await scan(http, site_url, raw["value"], "4915100000005")
    await api.until("Ada", "WORKING")
    assert (await api.call("GET", "/api/sessions/Ada"))[0] == 200
    assert (await api.call("GET", "/api/sessions/Ada/me"))[0] == 200
    assert (await api.call("GET", "/api/Ada/auth/qr"))[0] == 409
    text = {"session": "Ada", "chatId": "4915100000006@c.us", "text": "hi"}
    assert (await api.call("POST", "/api/sendText", text))[0] == 201
    assert (await api.call("PUT", "/api/sessions/idle", {"config": config}))[0] == 200
    assert (await api.call("POST", "/api/sessions/Ada/restart"))[0] == 201
    await api.until("Ada", "WORKING")  # restored: no new scan
    assert (await api.call("POST", "/api/sessions/Ada/stop"))[0] == 200
    assert (await api.call("POST", "/api/sessions/Ada/start"))[0] == 201
    assert (await api.call("POST", "/api/sessions/Ada/logout"))[0] == 201
    assert (await api.call("DELETE", "/api/sessions/Ada"))[0] == 200

    # Errors, each in WAHA's form.
    assert (await api.call("GET", "/api/sessions/Ada"))[0] == 404
    assert (await api.call("POST", "/api/sessions/Ada/start"))[0] == 404
    assert (await api.call("POST", "/api/sessions/nobody/stop"))[0] == 404
    assert (await api.call("POST", "/api/sessions/nobody/restart"))[0] == 404
    assert (await api.call("POST", "/api/sessions/nobody/logout"))[0] == 404
    assert (await api.call("DELETE", "/api/sessions/nobody"))[0] == 404
    assert (await api.call("GET", "/api/sessions/nobody/me"))[0] == 404
    assert (await api.call("PUT", "/api/sessions/nobody", {}))[0] == 404
    assert (await api.call("GET", "/api/nobody/auth/qr"))[0] == 404
    assert (await api.call("GET", "/api/screenshot?session=idle"))[0] == 409
    bad = {"name": "x", "config": {"webhooks": [{"url": "nope"}]}}
    assert (await api.call("POST", "/api/sessions", bad, valid=False))[0] == 400
    assert (await api.call("GET", "/api/sessions?all=maybe", valid=False))[0] == 400
    assert (await api.call("PUT", "/api/sessions/idle", {"color": 1}, valid=False))[0] == 400
    assert (await api.call("POST", "/api/sendText", {"session": "idle"}, valid=False))[0] == 400
    assert (await api.call("POST", "/api/sendText", text | {"session": "gone"}))[0] == 404
    idle = text | {"session": "idle"}
    assert (await api.call("POST", "/api/sendText", idle))[0] == 409
    assert (await api.call("GET", "/api/sessions", key="wrong"))[0] == 401

    assert operations(document) == api.tried(), "every operation is tried"
