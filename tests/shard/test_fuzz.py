"""Every operation of both OpenAPI documents, fuzzed with schemathesis against a real shard
(Redis, Chromium, the stand-in site): requests generated from the document, valid and not.
No answer may be a server error (500, 502, 504; 501 is a documented "not implemented", 503
must say when to retry), and every error has a JSON body in its surface's form."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from shard.api import openapi_document
from shard.waha.routes import openapi_document as waha_document
from support.shards import API_KEY, ShardFleet

pytestmark = [pytest.mark.browser]
EXAMPLES = 30
# Headers that frame the HTTP message itself. A generated value for one of them (say
# `Transfer-Encoding: udZY`) makes the request invalid HTTP: aiohttp's parser refuses it with
# a plain-text 400 before any handler runs, as nginx in front would with its own HTML page.
FRAMING = {"transfer-encoding", "content-length"}


def check(response: Any, surface: str, framing: bool = False) -> None:
    """`response` is schemathesis's: headers lowercase, each a list of values. `framing`:
    the generator set a message-framing header, so the HTTP layer may answer a plain 400."""
    where = f"{response.request.method} {response.request.url}"
    status = response.status_code
    assert status not in (500, 502, 504), f"{where}: {status} {response.text[:300]}"
    if status == 503:
        assert "retry-after" in response.headers, f"{where}: 503 without Retry-After"
    if status == 400 and framing:
        return
    if status >= 400:
        content = response.headers.get("content-type", [""])[0]
        assert content.startswith("application/json"), f"{where}: {status} {content}"
        body = response.json()
        wanted = "statusCode" if surface == "waha" else "error"
        assert wanted in body, f"{where}: {body}"


def fuzz(document: dict[str, Any], base: str, surface: str) -> int:
    """Run every operation's generated cases, valid ones and ones the document forbids;
    returns how many requests were sent."""
    schema = schemathesis.openapi.from_dict(document)
    sent = 0
    results = list(schema.get_all_operations())
    for result, mode in itertools.product(results, GenerationMode):
        assert isinstance(result, Ok), result
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def one(case: Any) -> None:
            nonlocal sent
            response = case.call(base_url=base, headers={"X-Api-Key": API_KEY}, timeout=60)
            sent += 1
            generated = {name.lower() for name in case.headers or {}}
            check(response, surface, framing=bool(generated & FRAMING))

        try:
            one()
        except Unsatisfiable:  # nothing the document forbids (an operation without inputs)
            assert mode == GenerationMode.NEGATIVE, operation.label
    return sent


def test_no_generated_request_gets_a_server_error(fleet: ShardFleet) -> None:
    shard = fleet.start("shard-1", MAX_SESSIONS="3")
    assert fuzz(openapi_document(), shard.url, "chatscale") > 600
    assert fuzz(waha_document(), shard.url + "/waha", "waha") > 600
