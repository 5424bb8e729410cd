"""WAHA's error form on the /waha paths: NestJS's `{statusCode, message, error}` body for every
error (chatscale's own body is `{error, status}`; WAHA's 401 comes from api.api_key)."""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web

from shard.errors import Handler

PREFIX = "/waha/"


@web.middleware
async def waha_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outside the JSON error middlewares on /waha paths: reshapes the error bodies they made."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    return _reshaped(await handler(request))


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
