"""WAHA's error forms on the /waha paths: the 401 WAHA sends, and NestJS's
`{statusCode, message, error}` body for every other error (chatscale's own body is
`{error, status}`)."""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from shard.api import key_matches
from shard.errors import Handler
from shard.state import SHARD

PREFIX = "/waha/"
OPEN = "/waha/openapi.json"
UNAUTHORIZED = {"message": "Unauthorized", "statusCode": 401}


@web.middleware
async def waha_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outside the JSON error middlewares on /waha paths: reshapes the error bodies they made."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    return _reshaped(await handler(request))


@web.middleware
async def waha_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """WAHA clients send the key as X-Api-Key or ?x-api-key=; either must match. A key given in
    the query travels on as the header, so a forward to the owner shard carries it."""
    key = request.app[SHARD].settings.api_key
    if not key or not request.path.startswith(PREFIX) or request.path == OPEN:
        return await handler(request)
    given = request.headers.get("X-Api-Key") or request.query.get("x-api-key", "")
    if not key_matches(given, key):
        return web.json_response(UNAUTHORIZED, status=401)
    if "X-Api-Key" not in request.headers:
        request = request.clone(headers={**request.headers, "X-Api-Key": given})
    return await handler(request)


def _nest(status: int, message: str) -> web.Response:
    body = {"statusCode": status, "message": message, "error": HTTPStatus(status).phrase}
    return web.json_response(body, status=status)


def _reshaped(response: web.StreamResponse) -> web.StreamResponse:
    if response.status < 400 or not isinstance(response, web.Response):
        return response
    try:
        body = json.loads(response.body) if isinstance(response.body, bytes) else None
    except ValueError:
        return response
    if not isinstance(body, dict) or set(body) != {"error", "status"}:
        return response  # already WAHA's form (say, from the owner shard)
    reshaped = _nest(response.status, str(body["error"]))
    for name in ("Retry-After", "X-Shard-Id"):
        if name in response.headers:
            reshaped.headers[name] = response.headers[name]
    return reshaped
