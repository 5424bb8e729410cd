"""The WAHA-compatible handlers, under /waha (nginx's WAHA port strips nothing: it prefixes).

Each handler finds the session a request names (find.py); a session live on another shard is
forwarded to it as is, so the owner answers in WAHA's form. Starting and creating reuse the
shard's own paths (api.py), which place a new session on its ring owner or hand it to an
activator; their answer is then put in WAHA's form here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from shard.access import scoped, workspace_for
from shard.api import (
    SEND_LIMIT,
    BadRequest,
    elsewhere,
    ensure_started,
    forget_idle,
    read_json,
    rerun_if_handed_off,
    settled,
    start_here,
)
from shard.catalog import STATUSES, Catalog, query_from
from shard.errors import json_error
from shard.limits import admit_create, admit_send
from shard.sessions import NotHere, SessionSpec
from shard.state import SHARD
from shard.waha import views
from shard.waha.find import (
    Found,
    check_body,
    dto_body,
    find,
    live_record,
    phone_of,
    spec_for,
    write_stopped,
)
from shard.waha.live import websocket
from shard.waha.names import DEFAULT_NAME, session_id

PREFIX = "/waha"
LIST_FIELDS = ("owner", "status", "name", "metadata", "webhooks", "me", "updated_at", "created_at")


def routes() -> list[web.RouteDef]:
    api = f"{PREFIX}/api"
    one = f"{api}/sessions/{{name}}"
    return [
        web.get(f"{api}/sessions", list_sessions),
        web.post(f"{api}/sessions", create),
        web.get(one, get),
        web.put(one, update),
        web.delete(one, delete),
        web.post(f"{one}/start", start),
        web.post(f"{one}/stop", stop),
        web.post(f"{one}/restart", restart),
        web.post(f"{one}/logout", logout),
        web.get(f"{one}/me", me),
        web.get(f"{api}/{{name}}/auth/qr", qr),
        web.get(f"{api}/screenshot", screenshot),
        web.post(f"{api}/sendText", send_text),
        web.get(f"{api}/version", version),
        web.get(f"{api}/server/version", version),
        web.get(f"{PREFIX}/ws", websocket),
        web.get(f"{PREFIX}/openapi.json", openapi),
        web.route("*", f"{PREFIX}/{{tail:.*}}", unsupported),
    ]


# --- sessions -------------------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    """Every session of the fleet, as WAHA lists them (STOPPED ones only with ?all=true). Beside
    WAHA's `all`, chatscale's filters and paging work here too (`status`, `workspace_id`,
    `account_id`, `limit`, `offset`); without `limit`, every session."""
    own = {k: v for k, v in request.query.items() if k not in ("all", "expand", "x-api-key")}
    query = query_from(own)
    if "limit" not in own:
        query = replace(query, limit=1 << 30)
    query = scoped(request, query)
    if not _flag(request.query.get("all", "false"), "all") and not query.statuses:
        query = replace(query, statuses=STATUSES - {"STOPPED"})
    shard = request.app[SHARD]
    catalog = Catalog(shard.registry.redis, shard.registry.keys, LIST_FIELDS)
    page = await catalog.page(query)
    return web.json_response([views.session_info(sid, record) for sid, record in page.records])


async def create(request: web.Request) -> web.StreamResponse:
    body, _ = await read_json(request)
    check_body(body, {"name", "start", "config"})
    name = body.get("name") or DEFAULT_NAME
    run = _flag(body.get("start", True), "start")
    spec = spec_for(name, session_id(name), body.get("config"))
    spec = replace(spec, workspace_id=workspace_for(request, ""))
    found = await find(request, name, must_exist=False)
    if found.where.local or found.where.record or found.where.remote_owner:
        return json_error(422, f"session {name!r} already exists")
    if run:
        return await _dto(request, await ensure_started(request, found.sid, spec), found, 201)
    shard = request.app[SHARD]
    await admit_create(request)
    await write_stopped(shard.registry, found.sid, spec)
    record = await shard.registry.record(found.sid)
    return web.json_response(views.session_dto(found.sid, record), status=201)


async def get(request: web.Request) -> web.StreamResponse:
    found = await find(request, request.match_info["name"])
    shard = request.app[SHARD]
    if found.where.local is not None:
        record = live_record(shard, found.where.local)
        return web.json_response(views.session_info(found.sid, record))
    if found.where.remote_owner is None:
        return web.json_response(views.session_info(found.sid, found.where.record))
    return await elsewhere(request, found.where, found.sid)


async def update(request: web.Request) -> web.StreamResponse:
    """New config; a running session restarts with it (as WAHA does)."""
    found = await find(request, request.match_info["name"])
    if found.where.remote_owner is not None:
        return await elsewhere(request, found.where, found.sid)
    body, _ = await read_json(request)
    check_body(body, {"config"})
    shard = request.app[SHARD]
    local = found.where.local
    base = local.spec if local else SessionSpec.from_record(found.where.record)
    spec = spec_for(found.name, found.sid, body.get("config"), base)
    if local is not None:
        await rerun_if_handed_off(shard.manager.stop(found.sid))
        return await _dto(request, await start_here(request, found.sid, spec), found, 200)
    if found.where.record.get("status", "STOPPED") == "STOPPED":
        await write_stopped(shard.registry, found.sid, spec)
        record = await shard.registry.record(found.sid)
        return web.json_response(views.session_dto(found.sid, record))
    return await _dto(request, await ensure_started(request, found.sid, spec), found, 200)


async def delete(request: web.Request) -> web.StreamResponse:
    found = await find(request, request.match_info["name"])
    shard = request.app[SHARD]
    if found.where.local is not None:
        await rerun_if_handed_off(shard.manager.delete(found.sid))
    elif found.where.remote_owner is None:
        await forget_idle(shard, found.sid)
    else:
        return await elsewhere(request, found.where, found.sid)
    return web.json_response({"name": found.name, "status": "STOPPED"})


async def start(request: web.Request) -> web.StreamResponse:
    found = await find(request, request.match_info["name"])
    return await _dto(request, await ensure_started(request, found.sid, None), found, 201)


async def stop(request: web.Request) -> web.StreamResponse:
    found = await find(request, request.match_info["name"])
    shard = request.app[SHARD]
    if found.where.local is not None:
        session = await rerun_if_handed_off(shard.manager.stop(found.sid))
        return web.json_response(views.session_dto(found.sid, live_record(shard, session)))
    if found.where.remote_owner is None:
        await shard.registry.mark_stopped(found.sid)
        record = await shard.registry.record(found.sid)
        return web.json_response(views.session_dto(found.sid, record))
    return await elsewhere(request, found.where, found.sid)


async def restart(request: web.Request) -> web.StreamResponse:
    found = await find(request, request.match_info["name"])
    if found.where.remote_owner is not None:
        return await elsewhere(request, found.where, found.sid)
    if found.where.local is not None:
        return await _reopen(request, found, request.app[SHARD].manager.stop)
    return await _dto(request, await ensure_started(request, found.sid, None), found, 201)


async def logout(request: web.Request) -> web.StreamResponse:
    """Log out at the site and drop the saved login; a running session starts over (new QR)."""
    found = await find(request, request.match_info["name"])
    shard = request.app[SHARD]
    if found.where.remote_owner is not None:
        return await elsewhere(request, found.where, found.sid)
    if found.where.local is not None:
        return await _reopen(request, found, shard.manager.delete)
    spec = SessionSpec.from_record(found.where.record)
    await shard.registry.forget_idle(found.sid)
    await write_stopped(shard.registry, found.sid, spec)
    record = await shard.registry.record(found.sid)
    return web.json_response(views.session_dto(found.sid, record))


async def _reopen(
    request: web.Request, found: Found, close: Callable[[str], Awaitable[object]]
) -> web.StreamResponse:
    """Close the live session here (`close`: stop, or delete with its login) and open it again
    with the same spec."""
    assert found.where.local is not None
    spec = found.where.local.spec
    await close(found.sid)
    return await _dto(request, await start_here(request, found.sid, spec), found, 201)


async def me(request: web.Request) -> web.StreamResponse:
    found = await find(request, request.match_info["name"])
    if found.where.local is not None:
        return web.json_response(views.me_view(found.where.local.me or None))
    if found.where.remote_owner is None:
        working = found.where.record.get("status") == "WORKING"
        return web.json_response(views.me_view(found.where.record.get("me") if working else None))
    return await elsewhere(request, found.where, found.sid)


# --- the page: QR, screenshot, sending ------------------------------------------------------


async def qr(request: web.Request) -> web.StreamResponse:
    """WAHA's three forms: PNG (Accept: image/png, the default), {mimetype, data} (Accept:
    application/json), {value} (?format=raw)."""
    found = await find(request, request.match_info["name"])
    fmt = request.query.get("format", "image")
    if fmt not in ("image", "raw"):
        raise BadRequest("format must be 'image' or 'raw'")
    try:
        raw, png = await request.app[SHARD].manager.qr(found.sid, image=fmt == "image")
    except NotHere:
        return await elsewhere(request, found.where, found.sid)
    if fmt == "raw":
        return web.json_response({"value": raw})
    return _image(request, png)


async def screenshot(request: web.Request) -> web.StreamResponse:
    name = request.query.get("session", DEFAULT_NAME)
    found = await find(request, name)
    try:
        png = await request.app[SHARD].manager.screenshot(found.sid)
    except NotHere:
        return await elsewhere(request, found.where, found.sid)
    return _image(request, png)


async def send_text(request: web.Request) -> web.StreamResponse:
    body, _ = await read_json(request, SEND_LIMIT)
    name, text = body.get("session") or DEFAULT_NAME, body.get("text")
    phone = phone_of(body.get("chatId"))
    if not isinstance(text, str) or not text:
        raise BadRequest("text must be a non-empty string")
    found = await find(request, name)
    shard = request.app[SHARD]
    await admit_send(request)
    where = await settled(request, found.sid, found.where)
    if where.local is None:
        return await elsewhere(request, where, found.sid)
    message_id = await rerun_if_handed_off(shard.manager.send_text(found.sid, phone, text))
    sent = views.sent_message(message_id, where.local.me, f"{phone}@c.us", text)
    return web.json_response(sent, status=201)


# --- the rest -------------------------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    try:
        number = metadata.version("chatscale")
    except metadata.PackageNotFoundError:
        number = "unknown"
    return web.json_response({"version": number, "engine": "CHATSCALE", "tier": "CORE"})


@functools.cache
def openapi_document() -> dict[str, Any]:
    """This API's OpenAPI document (shard/waha/openapi.yaml), read once."""
    document: dict[str, Any] = yaml.safe_load(Path(__file__).with_name("openapi.yaml").read_text())
    return document


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def unsupported(request: web.Request) -> web.Response:
    path = request.path.removeprefix(PREFIX)
    return json_error(
        501,
        f"{request.method} {path} is a WAHA endpoint chatscale does not implement;"
        " see the README, 'Moving from WAHA'",
    )


def _image(request: web.Request, png: bytes) -> web.Response:
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(views.base64_file(png))
    return web.Response(body=png, content_type="image/png")


async def _dto(
    request: web.Request, response: web.StreamResponse, found: Found, status: int
) -> web.StreamResponse:
    """A create/start answer in WAHA's form (errors, and owners' WAHA answers, pass as they are)."""
    view = dto_body(response)
    if view is None:
        return response
    record = await request.app[SHARD].registry.record(found.sid)
    body = views.session_dto(found.sid, record | {"status": view["status"]})
    return web.json_response(body, status=status)


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise BadRequest(f"{name} must be true or false")
