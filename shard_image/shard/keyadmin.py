"""Managing API keys through the front, with an admin key: list, create (the key is shown once),
delete. Keys live in Redis by their SHA-256 (chatscale_contract.auth); config.yaml's own keys are
listed here but changed in config.yaml."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from chatscale_contract.auth import FROM_API, Grant, key_hash, new_key
from chatscale_contract.ids import PATTERN
from shard.access import check_admin
from shard.api import KEY_LIMIT, BadRequest, read_json
from shard.errors import json_error
from shard.state import SHARD

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PREFIX = re.compile(r"^[a-z0-9_-]{0,63}$")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/keys", list_keys),
        web.post("/api/keys", create_key),
        web.delete("/api/keys/{name}", delete_key),
    ]


async def _grants(request: web.Request) -> dict[str, Grant]:
    registry = request.app[SHARD].registry
    entries: dict[str, str] = await registry.redis.hgetall(registry.keys.api_keys)
    grants = {}
    for digest, text in entries.items():
        try:
            grants[digest] = Grant.parse(text)
        except ValueError:
            continue
    return grants


def _view(grant: Grant) -> dict[str, Any]:
    return {
        "name": grant.name,
        "scope": "admin" if grant.admin else "tenant",
        "prefix": grant.prefix,
        "workspace": grant.workspace,
        "source": grant.source,
        "creates_per_minute": grant.creates_per_minute,
        "sends_per_minute": grant.sends_per_minute,
        "max_sessions": grant.max_sessions,
    }


async def list_keys(request: web.Request) -> web.Response:
    check_admin(request)
    grants = sorted((await _grants(request)).values(), key=lambda g: (g.source, g.name))
    return web.json_response({"keys": [_view(g) for g in grants]})


async def create_key(request: web.Request) -> web.Response:
    check_admin(request)
    body, _ = await read_json(request, KEY_LIMIT)
    grant = _grant_from(body)
    if any(g.name == grant.name for g in (await _grants(request)).values()):
        return json_error(409, f"a key named {grant.name!r} exists; delete it first")
    key = new_key()
    registry = request.app[SHARD].registry
    await registry.redis.hset(registry.keys.api_keys, key_hash(key), grant.text())
    return web.json_response({**_view(grant), "key": key}, status=201)


def _grant_from(body: dict[str, Any]) -> Grant:
    limits = ("creates_per_minute", "sends_per_minute", "max_sessions")
    unknown = set(body) - {"name", "scope", "prefix", "workspace", *limits}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    name, scope = body.get("name"), body.get("scope", "tenant")
    prefix, workspace = body.get("prefix", ""), body.get("workspace", "")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest("name must be 1-64 of A-Z a-z 0-9 _ . -")
    if scope not in ("admin", "tenant"):
        raise BadRequest("scope must be 'admin' or 'tenant'")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise BadRequest(f"prefix must be the start of a session id ({PATTERN})")
    if not isinstance(workspace, str) or len(workspace) > 128:
        raise BadRequest("workspace must be a string of at most 128 characters")
    if scope == "tenant" and not (prefix or workspace):
        raise BadRequest("a tenant key needs a prefix or a workspace (or scope admin)")
    numbers = [body.get(field, 0) for field in limits]
    for field, value in zip(limits, numbers, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"{field} must be a whole number, 0 or more (0: no limit)")
    return Grant(name, scope == "admin", prefix, workspace, FROM_API, *numbers)


async def delete_key(request: web.Request) -> web.Response:
    check_admin(request)
    name = request.match_info["name"]
    found = {d: g for d, g in (await _grants(request)).items() if g.name == name}
    if not found:
        return json_error(404, f"no key named {name!r}")
    fixed = [g.source for g in found.values() if g.source != FROM_API]
    if fixed:
        return json_error(409, f"key {name!r} comes from {fixed[0]}; change it there")
    registry = request.app[SHARD].registry
    await registry.redis.hdel(registry.keys.api_keys, *found)
    return web.json_response({"name": name, "deleted": True})
