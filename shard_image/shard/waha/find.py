"""Finding the session a WAHA request names, and writing sessions that are not running. The
request side of routes.py, kept apart so the handlers read as what WAHA documents."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chatscale_contract.webhooks import hooks_text, session_hooks
from shard.api import BadRequest, Where, visible
from shard.registry import Registry
from shard.sessions import LiveSession, SessionSpec
from shard.state import Shard
from shard.waha.names import NameTaken, NoSession, name_of, session_id

_CONFIG_KEYS = {"metadata", "webhooks", "debug", "ignore", "client", "noweb", "gows", "webjs"}
"""`config` keys accepted. Beside metadata and webhooks they tune WAHA's own engines and mean
nothing to a browser shard; they are accepted (a client sends them by default) and not kept."""
_REFUSED_KEYS = {"proxy": "a per-session proxy"}
_CHAT_ID = re.compile(r"^\+?([0-9]{5,20})(?:@c\.us|@s\.whatsapp\.net)?$")
METADATA_MAX = 50


@dataclass(frozen=True)
class Found:
    name: str
    sid: str
    where: Where


async def find(request: web.Request, name: str, *, must_exist: bool = True) -> Found:
    """The session called `name`, wherever it lives. NoSession when there is none (and
    `must_exist`); NameTaken when the id is another name's."""
    sid = session_id(name)
    where = await visible(request, sid)
    if where.local is not None:
        known = where.local.spec.name or sid
    elif where.record:
        known = name_of(sid, where.record)
    else:
        known = name if where.remote_owner is not None else ""  # the owner checks the name
    if known and known != name:
        raise NameTaken(f"session {name!r} maps to id {sid!r}, which is {known!r}'s")
    if must_exist and not known:
        raise NoSession(f"session {name!r} does not exist")
    return Found(name, sid, where)


def live_record(shard: Shard, session: LiveSession) -> dict[str, str]:
    """A live session as its registry record would show it (views.py reads records)."""
    return {
        **session.spec.fields(),
        "status": session.status.value,
        "owner": shard.settings.shard_id,
        "me": session.me,
        "updated_at": repr(session.started_at),
    }


def spec_for(name: str, sid: str, config: object, base: SessionSpec | None = None) -> SessionSpec:
    """The spec of a session a WAHA client creates or updates: its `config` over `base`."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise BadRequest("config must be an object")
    for key, what in _REFUSED_KEYS.items():
        if config.get(key):
            raise BadRequest(f"config.{key}: chatscale does not support {what}")
    unknown = set(config) - _CONFIG_KEYS - set(_REFUSED_KEYS)
    if unknown:
        raise BadRequest(f"config: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        hooks = hooks_text(session_hooks(config.get("webhooks") or []))
    except ValueError as exc:
        raise BadRequest(f"config.{exc}") from None
    base = base or SessionSpec()
    return SessionSpec(
        driver=base.driver,
        options=base.options,
        workspace_id=base.workspace_id,
        account_id=base.account_id,
        webhooks=hooks,
        name="" if name == sid else name,
        metadata=metadata_from(config.get("metadata")),
    )


def check_body(body: dict[str, Any], allowed: set[str]) -> None:
    """Unknown fields, and WAHA apps (which chatscale does not have), are refused by name."""
    unknown = set(body) - allowed - {"apps"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    if body.get("apps"):
        raise BadRequest("apps: chatscale does not support WAHA apps")


def metadata_from(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > METADATA_MAX:
        raise BadRequest(f"config.metadata must be an object of at most {METADATA_MAX} entries")
    for key, value in raw.items():
        if not isinstance(value, str) or len(value) > 1024 or len(key) > 128:
            raise BadRequest(f"config.metadata.{key} must be a string (at most 1024 characters)")
    return dict(raw)


def phone_of(chat_id: object) -> str:
    """The phone number of a WAHA chat id (`<digits>@c.us`); BadRequest for groups and others."""
    match = _CHAT_ID.fullmatch(chat_id) if isinstance(chat_id, str) else None
    if match is None:
        raise BadRequest(
            "chatId must be a contact: <phone digits>@c.us (groups and channels are not supported)"
        )
    return match.group(1)


async def write_stopped(registry: Registry, sid: str, spec: SessionSpec) -> None:
    """Record a session that exists but does not run (WAHA's `start: false`, a logout of a
    stopped session): claimed, written and released in three fenced steps, so it is indexed
    and reported like any other session."""
    token = await registry.take(sid)
    await registry.update(sid, token, {**spec.fields(), "status": "STOPPED", "error": ""})
    await registry.release(sid, token, keep_running=False)


def dto_body(response: web.StreamResponse) -> dict[str, Any] | None:
    """chatscale's session view in a (local or forwarded) answer, or None when the answer is
    an error or already in WAHA's form."""
    if not isinstance(response, web.Response) or response.status >= 300 or not response.body:
        return None
    assert isinstance(response.body, bytes)
    view = json.loads(response.body)
    return view if isinstance(view, dict) and "id" in view else None
