"""Webhook delivery on the status address: counts, receivers and dead letters, and a replay."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from autoscaler.loop.daemon import Daemon
from autoscaler.metrics import quantile
from autoscaler.web.appkeys import DAEMON, DELIVERER
from autoscaler.webhooks.deliver import Deliverer
from autoscaler.webhooks.letters import dead_letters, replay


async def summary(daemon: Daemon, deliverer: Deliverer | None, count: int = 20) -> dict[str, Any]:
    """Receivers (URLs only: keys and headers stay private), this instance's counts, and the
    newest dead letters."""
    data: dict[str, Any] = {
        "receivers": [{"url": public(w.url), "events": w.events} for w in daemon.config.webhooks],
        "here": _stats(deliverer) if deliverer is not None else None,
    }
    try:
        dead = await dead_letters(daemon.redis, daemon.keys, count)
        for letter in dead["letters"]:
            letter["url"] = public(letter.get("url", ""))
            # A session's own receiver travels with its letter; its key is not shown.
            letter["session_receiver"] = bool(letter.pop("hooks", ""))
        data["dead"] = dead
    except RedisError as exc:
        data["dead"] = {"total": None, "letters": [], "error": str(exc)}
    return data


def public(url: str) -> str:
    """A receiver's URL as shown: without a user, password or query (they may carry secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    hidden = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"


def _stats(deliverer: Deliverer) -> dict[str, Any]:
    s = deliverer.stats
    return {
        "delivered": s.delivered,
        "retried": s.retried,
        "dead": s.dead,
        "last_error": s.last_error or None,
        "last_error_at": s.last_error_at or None,
        "latency_p50": quantile(s.latencies, 0.5),
        "latency_p99": quantile(s.latencies, 0.99),
    }


async def webhooks_json(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    raw = request.query.get("count", "100")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        return _error(400, f"count must be a whole number from 1 to 1000, not {raw!r}")
    return web.json_response(await summary(daemon, request.app.get(DELIVERER), int(raw)))


async def replay_json(request: web.Request) -> web.Response:
    """POST {"id": "<dead letter id>"} replays one; {"all": true} replays every one."""
    daemon = request.app[DAEMON]
    try:
        body = json.loads(await request.read() or b"{}")
    except json.JSONDecodeError as exc:
        return _error(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict) or len(body) != 1 or set(body) - {"id", "all"}:
        return _error(400, 'body must be {"id": "<dead letter id>"} or {"all": true}')
    if body.get("all") is True:
        letter = None
    elif isinstance(body.get("id"), str) and body["id"]:
        letter = body["id"]
    else:
        return _error(400, 'body must be {"id": "<dead letter id>"} or {"all": true}')
    urls = {w.url for w in daemon.config.webhooks}
    try:
        replayed, kept = await replay(daemon.redis, daemon.keys, letter, urls)
    except ValueError as exc:
        return _error(400, str(exc))
    if letter is not None and kept:
        return _error(
            409, f"dead letter {letter!r} is for {kept[0]}, which is no longer configured"
        )
    if letter is not None and not replayed:
        return _error(404, f"no dead letter {letter!r}")
    return web.json_response({"replayed": replayed, "kept_unconfigured": len(kept)})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)
