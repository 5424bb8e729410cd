"""The shard's HTTP API. The session id is always in the path, so nginx can route on it.

Requests for sessions that live elsewhere are forwarded to their owner (see routing.py); creates
are placed on the session's ring owner, or the next shard clockwise with room.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web
from playwright.async_api import Error as PlaywrightError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from chatscale_contract.hops import ADOPT, FORWARDED_BY, NO_ROOM
from chatscale_contract.ids import InvalidSessionId, check_session_id
from chatscale_contract.webhooks import hooks_text, session_hooks
from shard.access import (
    GRANT,
    Forbidden,
    check_admin,
    check_name,
    check_seen,
    scoped,
    workspace_for,
)
from shard.catalog import BadQuery, Catalog, query_from
from shard.drivers import DEFAULT_DRIVER, MAX_TEXT, DriverError, Unsupported
from shard.errors import Handler, json_error
from shard.handoff import Moved, hold, moving_answer
from shard.limits import Limited, admit_create, admit_send
from shard.registry import Full, Gone, OwnedElsewhere
from shard.routing import NoRoom
from shard.sessions import Draining, LiveSession, NotHere, SessionSpec, Status
from shard.state import SHARD, Shard
from shard.waha.names import BadName, NameTaken, NoSession
from shard.waha.names import session_id as waha_id

T = TypeVar("T")

_OPEN_PATHS = {"/health", "/metrics", "/openapi.json"}
WAHA_DOCUMENT = "/waha/openapi.json"
WAHA_UNAUTHORIZED = {"message": "Unauthorized", "statusCode": 401}
"""WAHA's own 401 body, which its clients expect."""
_SPEC_KEYS = {"driver", "options", "workspace_id", "account_id", "webhooks", "name", "metadata"}
_REF_MAX = 128


class BadRequest(Exception):
    """The request is malformed; the message says what to fix."""


class BodyTooLarge(web.HTTPRequestEntityTooLarge):
    """413 for a body over its route's limit (shard/errors.py names the limit)."""

    def __init__(self, limit: int, actual: int) -> None:
        super().__init__(max_size=limit, actual_size=actual)
        self.limit = limit


BODY_LIMIT = 64 * 1024
"""Bytes of JSON a create or an update may carry (spec, metadata, the session's receivers)."""
SEND_LIMIT = 32 * 1024
"""Bytes of JSON a send may carry: room for MAX_TEXT characters, each escaped as \\uXXXX."""
KEY_LIMIT = 4 * 1024
"""Bytes of JSON a new API key's request may carry."""


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health", health),
        web.get("/metrics", metrics),
        web.get("/openapi.json", openapi),
        web.get("/api/sessions", list_sessions),
        web.get("/admin/sessions", local_sessions),
        web.post("/api/sessions", create_legacy),
        web.put("/api/sessions/{id}", put_session),
        web.get("/api/sessions/{id}", get_session),
        web.delete("/api/sessions/{id}", delete_session),
        web.post("/api/sessions/{id}/stop", stop_session),
        web.get("/api/sessions/{id}/qr", get_qr),
        web.get("/api/sessions/{id}/screenshot", get_screenshot),
        web.post("/api/sessions/{id}/messages", send_message),
        web.post("/admin/drain", drain),
        web.post("/admin/undrain", undrain),
    ]


# --- middleware -----------------------------------------------------------------------------


@web.middleware
async def bad_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (BadRequest, BadQuery, InvalidSessionId, BadName) as exc:
        return json_error(400, str(exc))
    except NoSession as exc:
        return json_error(404, str(exc))
    except Forbidden as exc:
        return json_error(403, str(exc))
    except Limited as exc:
        return json_error(429, str(exc), retry_after=exc.retry_after)
    except NameTaken as exc:
        return json_error(409, str(exc))
    except Unsupported as exc:
        return json_error(501, str(exc))
    except DriverError as exc:
        return json_error(409, str(exc))
    except PlaywrightError as exc:  # the page changed under us (a QR rotated, a navigation)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return json_error(409, f"the page did not cooperate: {message}; retry")
    except OwnedElsewhere as exc:  # a shard came back to life meanwhile
        return json_error(503, f"session is owned by {exc.owner} now; retry", retry_after=1)
    except RedisError as exc:
        return json_error(503, f"the session registry is unreachable: {exc}", retry_after=2)


@web.middleware
async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The grant of the request's key (access.py): X-Api-Key, on the WAHA surface also
    ?x-api-key=. No grant: 401 (the older POST form may carry its key in the body instead)."""
    if request.path in _OPEN_PATHS or request.path == WAHA_DOCUMENT:
        return await handler(request)
    waha = request.path.startswith("/waha/")
    given = request.headers.get("X-Api-Key", "")
    if waha and not given and request.query.get("x-api-key"):
        given = request.query["x-api-key"]
        # On as the header, so a forward to the owner (maybe by another path) carries it.
        request = request.clone(headers={**request.headers, "X-Api-Key": given})
    grant = request.app[SHARD].keyring.grant_for(given)
    legacy_create = request.method == "POST" and request.path == "/api/sessions"
    if grant is None and not legacy_create:
        if waha:
            return web.json_response(WAHA_UNAUTHORIZED, status=401)
        return json_error(401, "missing or wrong X-Api-Key")
    if grant is not None:
        request[GRANT] = grant
    return await handler(request)


@web.middleware
async def shard_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Shard-Id", request.app[SHARD].settings.shard_id)
    return response


# --- request parsing ------------------------------------------------------------------------


async def read_json(request: web.Request, limit: int = BODY_LIMIT) -> tuple[dict[str, Any], bytes]:
    """The JSON object body (empty body: {}) and the raw bytes for forwarding; 413 naming
    `limit` for a longer body (before reading it, when its length is declared)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, declared)
    raw = await request.read()
    if len(raw) > limit:
        raise BodyTooLarge(limit, len(raw))
    if not raw.strip():
        return {}, raw
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body, raw


def path_id(request: web.Request) -> str:
    return check_session_id(request.match_info["id"])


def spec_from(body: dict[str, Any]) -> SessionSpec:
    unknown = set(body) - _SPEC_KEYS
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    driver = body.get("driver", DEFAULT_DRIVER)
    options = body.get("options", {})
    if not isinstance(driver, str):
        raise BadRequest("driver must be a string")
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    try:
        hooks = hooks_text(session_hooks(body.get("webhooks", [])))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    workspace, account = _ref(body, "workspace_id"), _ref(body, "account_id")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadRequest("metadata must be an object of strings")
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    return SessionSpec(driver, options, workspace, account, hooks, name, metadata)


def _ref(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{key} must be a string or a number")
    text = str(value)
    if len(text) > _REF_MAX:
        raise BadRequest(f"{key} is longer than {_REF_MAX} characters")
    return text


# --- views ----------------------------------------------------------------------------------


def live_view(shard: Shard, session: LiveSession) -> dict[str, Any]:
    return {
        "id": session.id,
        "status": session.status.value,
        "shard": shard.settings.shard_id,
        "driver": session.spec.driver,
        "workspace_id": session.spec.workspace_id,
        "account_id": session.spec.account_id,
        "error": session.error or None,
        "token": session.token,
    }


def record_view(sid: str, record: dict[str, str]) -> dict[str, Any]:
    return {
        "id": sid,
        "status": record.get("status", "STOPPED"),
        "shard": record.get("owner") or None,
        "driver": record.get("driver") or DEFAULT_DRIVER,
        "workspace_id": record.get("workspace_id", ""),
        "account_id": record.get("account_id", ""),
        "error": record.get("error") or None,
        "token": _number(record.get("token", "0")),
    }


def _number(text: str) -> int:
    """A number from a record; 0 for a damaged one (reads never fail on what Redis holds)."""
    return int(text) if text.isdigit() else 0


# --- locating a session ---------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Where a session is, from this shard's point of view."""

    local: LiveSession | None
    record: dict[str, str]
    remote_owner: str | None
    """Another live shard that owns it."""


async def visible(request: web.Request, sid: str) -> Where:
    """Where the session is, once the request's key may see it: Forbidden for an id outside
    its prefix (before anything is read), NoSession for another tenant's session."""
    check_name(request, sid)
    where = await locate(request.app[SHARD], sid)
    if where.local is not None:
        check_seen(request, sid, where.local.spec.workspace_id)
    else:
        check_seen(request, sid, where.record.get("workspace_id", "") if where.record else None)
    return where


async def locate(shard: Shard, sid: str) -> Where:
    if sid in shard.manager.sessions:
        return Where(shard.manager.sessions[sid], {}, None)
    record = await shard.registry.record(sid)
    owner = record.get("owner", "")
    remote = owner if owner and owner != shard.settings.shard_id else None
    if remote is not None and not await shard.router.alive(remote):
        remote = None
    return Where(None, record, remote)


def moving(where: Where) -> bool:
    """Between two shards for a moment (a drain's hand-off, a reopen from the snapshot): a
    request that needs the page is worth holding (shard/handoff.py)."""
    if where.local is not None:
        return where.local.status == Status.STARTING and where.local.restored
    if where.remote_owner is not None or not where.record:
        return False
    record = where.record
    return record.get("desired", "running") == "running" and record.get("status") not in (
        Status.STOPPED,
        Status.FAILED,
    )


async def settled(request: web.Request, sid: str, where: Where | None = None) -> Where:
    """Where the session is (`visible`), once it is no longer moving or HANDOFF_WAIT passed."""
    shard = request.app[SHARD]
    if where is None:
        where = await visible(request, sid)
    wait = shard.settings.handoff_wait
    return await hold(where, moving, lambda: locate(shard, sid), wait)


async def elsewhere(request: web.Request, where: Where, sid: str) -> web.StreamResponse:
    """Answer for a session not live here: forward to its owner, or say why not."""
    shard = request.app[SHARD]
    if where.remote_owner is not None:
        if FORWARDED_BY in request.headers:  # never passed on twice: the sender runs it again
            return moving_answer(sid)
        shard.metrics.forwarded.inc()
        return await shard.router.forward(request, where.remote_owner, await request.read())
    if not where.record:
        return json_error(404, f"no session {sid!r}")
    status = where.record.get("status", "STOPPED")
    return json_error(409, f"session {sid!r} is not running (status {status})")


# --- handlers -------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    shard = request.app[SHARD]
    body = {
        "status": "ok",
        "shard": shard.settings.shard_id,
        "state": shard.state,
        "sessions": len(shard.manager.sessions),
        "capacity": shard.settings.max_sessions,
    }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    shard = request.app[SHARD]
    shard.refresh_gauges()
    payload = generate_latest(shard.metrics.registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document (shard/openapi.yaml), read once."""
    text = Path(__file__).with_name("openapi.yaml").read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def list_sessions(request: web.Request) -> web.Response:
    """Every session of the fleet (from the registry), filtered and paged: the same answer
    whichever shard gives it."""
    shard = request.app[SHARD]
    query = scoped(request, query_from(request.query))
    page = await Catalog(shard.registry.redis, shard.registry.keys).page(query)
    after = query.offset + len(page.records)
    return web.json_response(
        {
            "shard": shard.settings.shard_id,
            "sessions": [record_view(sid, record) for sid, record in page.records],
            "total": page.total,
            "limit": query.limit,
            "offset": query.offset,
            "next_offset": after if after < page.total else None,
        }
    )


async def local_sessions(request: web.Request) -> web.Response:
    """The sessions this shard has open now (browser contexts), for operators and tests."""
    check_admin(request)
    shard = request.app[SHARD]
    views = [live_view(shard, s) for s in shard.manager.sessions.values()]
    return web.json_response({"shard": shard.settings.shard_id, "sessions": views})


async def put_session(request: web.Request) -> web.StreamResponse:
    body, _ = await read_json(request)
    spec = spec_from(body) if body else None
    sid = path_id(request)
    if spec is not None and spec.name and waha_id(spec.name) != sid:
        raise BadRequest(f"name {spec.name!r} is not session {sid!r}'s (shard/waha/names.py)")
    return await ensure_started(request, sid, spec)


async def create_legacy(request: web.Request) -> web.StreamResponse:
    """The older client form: POST /api/sessions {session_id, workspace_id, account_id, api_key}."""
    shard = request.app[SHARD]
    body, _ = await read_json(request)
    given = str(body.pop("api_key", ""))
    if GRANT not in request:
        grant = shard.keyring.grant_for(given)
        if grant is None:
            return json_error(401, "missing or wrong api_key")
        request[GRANT] = grant
    sid = check_session_id(body.pop("session_id", None))
    return await ensure_started(request, sid, spec_from(body))


async def ensure_started(
    request: web.Request, sid: str, spec: SessionSpec | None
) -> web.StreamResponse:
    """Create or start `sid` where it belongs; idempotent."""
    shard = request.app[SHARD]
    where = await visible(request, sid)
    if where.local is not None:
        return web.json_response(live_view(shard, where.local))
    if where.remote_owner is not None:
        return await elsewhere(request, where, sid)
    spec = spec or (SessionSpec.from_record(where.record) if where.record else SessionSpec())
    if not where.record:
        spec = replace(spec, workspace_id=workspace_for(request, spec.workspace_id))
        await admit_create(request)
    try:
        shard.manager.build(spec)  # validate before claiming anything
    except DriverError as exc:
        raise BadRequest(str(exc)) from None
    forwarded = FORWARDED_BY in request.headers
    if ADOPT in request.headers and not where.record:
        return _gone(sid)
    mine = where.record.get("owner") == shard.settings.shard_id
    if not forwarded and not mine:
        return await placed(request, sid, spec)
    return await start_here(request, sid, spec)


async def placed(request: web.Request, sid: str, spec: SessionSpec) -> web.StreamResponse:
    """Start a new session on the shard with room for it: here, or passed on. Placement goes by
    heartbeats, which can be a few seconds behind: a shard that turns out to have no room is
    passed over for the next one, and with none left the request is refused (held)."""
    shard = request.app[SHARD]
    # Creates are always passed on as the canonical PUT, whatever form they came in.
    body, path = json.dumps(_spec_body(spec)).encode(), f"/api/sessions/{sid}"
    passed_over: set[str] = set()
    while True:
        target = await shard.router.place(sid, shard.has_room(), exclude=passed_over)
        if target is None:
            return await refuse(request, sid)
        if target == shard.settings.shard_id:
            return await start_here(request, sid, spec)
        shard.metrics.forwarded.inc()
        try:
            return await shard.router.forward(
                request, target, body, method="PUT", path=path, placing=True
            )
        except NoRoom:
            passed_over.add(target)


def _gone(sid: str) -> web.Response:
    return json_error(404, f"session {sid!r} was deleted or stopped while it moved")


def _spec_body(spec: SessionSpec) -> dict[str, Any]:
    return {
        "driver": spec.driver,
        "options": spec.options,
        "workspace_id": spec.workspace_id,
        "account_id": spec.account_id,
        "webhooks": json.loads(spec.webhooks) if spec.webhooks else [],
        "name": spec.name,
        "metadata": spec.metadata,
    }


async def start_here(request: web.Request, sid: str, spec: SessionSpec) -> web.StreamResponse:
    shard = request.app[SHARD]
    try:
        session, created = await shard.manager.start(sid, spec, adopt=ADOPT in request.headers)
    except Gone:
        return _gone(sid)
    except Draining:
        return _no_room(request, json_error(503, "this shard is draining", retry_after=1))
    except Full:
        return await refuse(request, sid)
    except OwnedElsewhere as exc:
        if FORWARDED_BY in request.headers:
            return json_error(503, f"session {sid!r} is moving; retry", retry_after=1)
        return await shard.router.forward(request, exc.owner, await request.read())
    return web.json_response(live_view(shard, session), status=201 if created else 200)


async def refuse(request: web.Request, sid: str) -> web.Response:
    """No room anywhere: record the demand so the autoscaler sees it at once, then hand the
    request to an activator, which holds it until a shard has room. Without one (or for a
    request an activator or shard passed here: it is retried there), ask for a retry."""
    shard = request.app[SHARD]
    shard.metrics.refused.inc()
    await shard.registry.mark_pending(sid)
    await shard.registry.nudge()
    if FORWARDED_BY not in request.headers:
        answer = await shard.router.to_activator(request, await request.read())
        if answer is not None:
            shard.metrics.activated.inc()
            return answer
    answer = json_error(503, "no shard has room for a new session; retry later", retry_after=5)
    return _no_room(request, answer)


def _no_room(request: web.Request, answer: web.Response) -> web.Response:
    """Mark a refused create that another shard passed here, so that one tries elsewhere."""
    if FORWARDED_BY in request.headers:
        answer.headers[NO_ROOM] = "1"
    return answer


async def get_session(request: web.Request) -> web.StreamResponse:
    shard = request.app[SHARD]
    sid = path_id(request)
    where = await visible(request, sid)
    if where.local is not None:
        return web.json_response(live_view(shard, where.local))
    if where.remote_owner is None and where.record:
        return web.json_response(record_view(sid, where.record))
    return await elsewhere(request, where, sid)


async def stop_session(request: web.Request) -> web.StreamResponse:
    shard = request.app[SHARD]
    sid = path_id(request)
    where = await visible(request, sid)
    if where.local is not None:
        session = await rerun_if_handed_off(shard.manager.stop(sid))
        return web.json_response(live_view(shard, session))
    if where.remote_owner is None and where.record:
        await shard.registry.mark_stopped(sid)
        return web.json_response(record_view(sid, await shard.registry.record(sid)))
    return await elsewhere(request, where, sid)


async def delete_session(request: web.Request) -> web.StreamResponse:
    shard = request.app[SHARD]
    sid = path_id(request)
    where = await visible(request, sid)
    if where.local is not None:
        await rerun_if_handed_off(shard.manager.delete(sid))
        return web.json_response({"id": sid, "deleted": True})
    if where.remote_owner is None and where.record:
        await forget_idle(shard, sid)
        return web.json_response({"id": sid, "deleted": True})
    return await elsewhere(request, where, sid)


async def rerun_if_handed_off(work: Awaitable[T]) -> T:
    """`work` on a session held here (a SessionManager call); if a hand-off took the session
    away while `work` waited for it (NotHere), the handler runs again (handoff.py) and finds it
    where it went."""
    try:
        return await work
    except NotHere:
        raise Moved() from None


async def forget_idle(shard: Shard, sid: str) -> None:
    """Delete a session no live shard runs; one claimed meanwhile (a hand-off's new owner) is
    deleted there when the handler runs again."""
    try:
        await shard.registry.forget_idle(sid)
    except OwnedElsewhere:
        raise Moved() from None


async def get_qr(request: web.Request) -> web.StreamResponse:
    shard = request.app[SHARD]
    sid = path_id(request)
    fmt = request.query.get("format", "png")
    if fmt not in ("png", "raw"):
        raise BadRequest("format must be 'png' or 'raw'")
    await settled(request, sid)
    try:
        raw, png = await shard.manager.qr(sid, image=fmt == "png")
    except NotHere:
        return await elsewhere(request, await settled(request, sid), sid)
    if fmt == "raw":
        return web.json_response({"id": sid, "qr": raw})
    return web.Response(body=png, content_type="image/png")


async def get_screenshot(request: web.Request) -> web.StreamResponse:
    shard = request.app[SHARD]
    sid = path_id(request)
    await settled(request, sid)
    try:
        png = await shard.manager.screenshot(sid)
    except NotHere:
        return await elsewhere(request, await settled(request, sid), sid)
    return web.Response(body=png, content_type="image/png")


async def send_message(request: web.Request) -> web.StreamResponse:
    shard = request.app[SHARD]
    sid = path_id(request)
    where = await settled(request, sid)
    await admit_send(request)
    if where.local is None:
        return await elsewhere(request, where, sid)
    body, _ = await read_json(request, SEND_LIMIT)
    to, text = body.get("to"), body.get("text")
    if not isinstance(to, str) or not to:
        raise BadRequest("to must be a non-empty string (a phone number)")
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
        raise BadRequest(f"text must be a non-empty string of at most {MAX_TEXT} characters")
    message_id = await rerun_if_handed_off(shard.manager.send_text(sid, to, text))
    return web.json_response({"id": sid, "message_id": message_id, "to": to}, status=201)


async def drain(request: web.Request) -> web.Response:
    check_admin(request)
    shard = request.app[SHARD]
    shard.start_drain()
    return web.json_response({"shard": shard.settings.shard_id, "state": shard.state}, status=202)


async def undrain(request: web.Request) -> web.Response:
    check_admin(request)
    shard = request.app[SHARD]
    await shard.cancel_drain()
    return web.json_response({"shard": shard.settings.shard_id, "state": shard.state})
