"""Requests to a shard, each exchange checked against an OpenAPI document with openapi-core."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from support.shards import API_KEY


class Checked:
    """Sends requests to a shard and checks each exchange against its OpenAPI document."""

    def __init__(self, http: aiohttp.ClientSession, base: str, document: dict[str, Any]):
        self.http, self.base = http, base
        self.spec = OpenAPI.from_dict(document)
        self.paths: list[str] = list(document["paths"])
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = API_KEY,
        valid: bool = True,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One exchange; `valid=False` marks a request the document itself forbids (sent to see
        the error), which is then not checked against it."""
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(headers or {})
        if data is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["X-Api-Key"] = key
        sent = io.BytesIO(data) if data is not None else None  # aiohttp warns on big bytes
        async with self.http.request(method, self.base + path, data=sent, headers=headers) as r:
            raw, status, answer_headers = await r.read(), r.status, dict(r.headers)
        parts = urlsplit(path)
        args = dict(pair.split("=", 1) for pair in parts.query.split("&") if pair)
        request = MockRequest(
            self.base, method.lower(), parts.path, args=args, headers=headers, data=data
        )
        if valid:
            self.spec.validate_request(request)  # a check of the test itself
        content_type = answer_headers.get("Content-Type", "").split(";")[0]
        response = MockResponse(raw, status, answer_headers, content_type)
        self.spec.validate_response(request, response)  # raises, naming what does not match
        self.seen.add((method, parts.path, status))
        return status, json.loads(raw) if content_type == "application/json" else raw

    async def until(self, sid: str, status: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (await self.call("GET", f"/api/sessions/{sid}"))[1]["status"] != status:
            assert time.monotonic() < deadline, f"{sid} never reached {status}"
            await asyncio.sleep(0.2)  # each answer on the way is checked too

    def tried(self) -> set[tuple[str, str]]:
        """The document's operations this client sent: (method, path template)."""
        return {(m, template_of(p, self.paths)) for m, p, _ in self.seen}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (method, path template) a document describes."""
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }


def template_of(path: str, templates: list[str]) -> str:
    """The path template (`/api/sessions/{id}`) a concrete path falls under, else the path."""
    for template in templates:
        if re.fullmatch(re.sub(r"\\\{[a-z]+\\\}", "[^/]+", re.escape(template)), path):
            return template
    return path
