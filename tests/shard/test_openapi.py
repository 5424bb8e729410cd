"""Real answers of a real shard (Redis, Chromium, the stand-in site), each request and answer
checked against the OpenAPI document it serves, with openapi-core: every route, its errors too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from support.openapicheck import Checked, operations
from support.shards import API_KEY, ShardFleet, scan

pytestmark = [pytest.mark.browser]


@pytest.fixture
def spec_doc() -> Iterator[dict[str, Any]]:
    from shard.api import openapi_document

    yield openapi_document()


async def test_real_answers_match_the_document(
    fleet: ShardFleet, http: aiohttp.ClientSession, site_url: str, spec_doc: dict[str, Any]
) -> None:
    base = fleet.start("shard-1", MAX_SESSIONS="2").url
    api = Checked(http, base, spec_doc)
    assert await api.call("GET", "/openapi.json", key=None) == (200, spec_doc), "as written"

    assert (await api.call("PUT", "/api/sessions/alice", {"workspace_id": 7}))[0] == 201
    assert (await api.call("PUT", "/api/sessions/alice"))[0] == 200
    older = {"session_id": "bob", "api_key": API_KEY}
    assert (await api.call("POST", "/api/sessions", older, key=None))[0] == 201
    await api.until("alice", "SCAN_QR_CODE")
    code, qr = await api.call("GET", "/api/sessions/alice/qr?format=raw")
    assert code == 200
    assert (await api.call("GET", "/api/sessions/alice/qr"))[0] == 200
    assert (await api.call("GET", "/api/sessions/alice/screenshot"))[0] == 200
    await scan(http, site_url, qr["qr"], "4915100000001")
    await api.until("alice", "WORKING")
    assert (await api.call("GET", "/api/sessions/alice/qr"))[0] == 409
    message = {"to": "4915199999999", "text": "hi"}
    assert (await api.call("POST", "/api/sessions/alice/messages", message))[0] == 201
    assert (await api.call("PUT", "/api/sessions/carol"))[0] == 503, "full: two sessions"
    code, listing = await api.call("GET", "/api/sessions?status=WORKING&limit=10")
    assert (code, [s["id"] for s in listing["sessions"]]) == (200, ["alice"])
    assert (await api.call("GET", "/admin/sessions"))[0] == 200
    assert (await api.call("GET", "/health", key=None))[0] == 200
    assert (await api.call("GET", "/metrics", key=None))[0] == 200
    assert (await api.call("POST", "/api/sessions/bob/stop"))[0] == 200
    assert (await api.call("DELETE", "/api/sessions/bob"))[0] == 200

    # Errors: each with its JSON body.
    assert (await api.call("GET", "/api/sessions/Alice"))[0] == 400
    assert (await api.call("GET", "/api/sessions?limit=0", valid=False))[0] == 400
    assert (await api.call("PUT", "/api/sessions/dave", {"color": "red"}, valid=False))[0] == 400
    no_text = {"to": "1"}
    assert (await api.call("POST", "/api/sessions/alice/messages", no_text, valid=False))[0] == 400
    assert (await api.call("GET", "/api/sessions/nobody"))[0] == 404
    assert (await api.call("GET", "/api/sessions/bob/screenshot"))[0] == 404
    assert (await api.call("GET", "/api/sessions", key="wrong"))[0] == 401
    big = {"text": "x" * (1 << 20), "to": "1"}
    assert (await api.call("POST", "/api/sessions/alice/messages", big))[0] == 413
    tenant = {"name": "t1", "scope": "tenant", "prefix": "t-", "max_sessions": 2}
    assert (await api.call("POST", "/api/keys", tenant))[0] == 201
    assert (await api.call("POST", "/api/keys", tenant))[0] == 409
    assert (await api.call("POST", "/api/keys", {"name": "t2"}, valid=False))[0] == 400
    assert (await api.call("GET", "/api/keys"))[0] == 200
    assert (await api.call("DELETE", "/api/keys/t1"))[0] == 200
    assert (await api.call("DELETE", "/api/keys/t1"))[0] == 404
    assert (await api.call("POST", "/admin/drain"))[0] == 202
    assert (await api.call("POST", "/admin/undrain"))[0] == 200

    assert operations(spec_doc) == api.tried(), "every operation is tried"
