"""Who may do what on this shard: the grant of a request's key (chatscale_contract.auth), and
the checks each handler makes with it. The keyring is read from Redis at start and after every
heartbeat, so a new or revoked key counts within a heartbeat interval."""

from __future__ import annotations

import logging
from dataclasses import replace

import redis.asyncio as aioredis
from aiohttp import web

from chatscale_contract.auth import OPEN, Grant, Keyring
from chatscale_contract.keys import Keys
from shard.catalog import Query
from shard.waha.names import NoSession

log = logging.getLogger(__name__)
GRANT = "chatscale.grant"
"""Where a request keeps its grant (aiohttp requests are mappings)."""


class Forbidden(Exception):
    """The key is valid but may not do this (403); the message says what it may do."""


async def load_keyring(client: aioredis.Redis, keys: Keys, env_key: str) -> Keyring:
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.auth_mode)
        pipe.hgetall(keys.api_keys)
        pipe.get(keys.internal_key)
        mode, entries, internal = await pipe.execute()
    return Keyring.load(mode, entries, env_key, internal or "")


def grant_of(request: web.Request) -> Grant:
    """The request's grant; OPEN for the paths that need none (health, metrics, documents)."""
    grant = request.get(GRANT)
    return grant if isinstance(grant, Grant) else OPEN


def check_name(request: web.Request, sid: str) -> None:
    """The key may use this session id at all (a tenant's prefix); Forbidden if not."""
    grant = grant_of(request)
    if not grant.may_name(sid):
        raise Forbidden(f"this key may only use sessions whose id starts {grant.prefix!r}")


def check_seen(request: web.Request, sid: str, workspace: str | None) -> None:
    """The key may see this existing session (`workspace` None: it does not exist), whose id
    check_name passed. Another tenant's session is answered as if it did not exist."""
    if workspace is not None and not grant_of(request).may_see(sid, workspace):
        raise NoSession(f"no session {sid!r}")


def check_admin(request: web.Request) -> None:
    if not grant_of(request).admin:
        raise Forbidden("this needs an admin key")


def scoped(request: web.Request, query: Query) -> Query:
    """A listing limited to what the key may see."""
    grant = grant_of(request)
    if grant.admin:
        return query
    if grant.workspace and query.workspace_id not in (None, grant.workspace):
        raise Forbidden(f"this key sees only workspace {grant.workspace!r}")
    workspace = grant.workspace or query.workspace_id
    return replace(query, prefix=grant.prefix, workspace_id=workspace)


def workspace_for(request: web.Request, given: str) -> str:
    """The workspace a new session gets: a tenant key's own (another one is Forbidden)."""
    own = grant_of(request).workspace
    if own and given not in ("", own):
        raise Forbidden(f"this key may only create sessions in workspace {own!r}")
    return own or given
