"""JSON error responses: every 4xx/5xx names the problem in a body a client can parse."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, *, retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors (404, 405, 413, ...) and crashes into JSON bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text or exc.reason
        if exc.status == 413:  # the route's own limit, else the app's
            limit = getattr(exc, "limit", request.app["max_body"])
            message = f"request body too large (limit {limit} bytes)"
        return json_error(exc.status, message.removeprefix(f"{exc.status}: "))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error; see the shard's log")
