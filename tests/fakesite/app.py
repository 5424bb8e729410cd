"""Stand-in for WhatsApp Web used by chatscale's tests; not affiliated with WhatsApp or Meta.

An aiohttp app that mimics the external site's login flow closely enough for the shard's
`whatsapp` driver to run against it with its default selectors. All state is in memory,
per app instance. The page itself (HTML + inline JS) lives in page.html; heavy mode (a page that
weighs like WhatsApp Web: bundle, service worker, large DOM, IndexedDB data) in heavy.py.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from fakesite import heavy
from fakesite.heavy import ASSET_PREFIX, WORKER_PATH, HeavyOptions

BANNER = "Stand-in for WhatsApp Web used by chatscale's tests; not affiliated"
PAGE = Path(__file__).with_name("page.html").read_text(encoding="utf-8")
DEFAULT_PHONE = "15550001234"
PRUNE_AFTER = 60.0  # seconds without a poll before a pending login (a closed page) is dropped
NO_CACHE = {"Cache-Control": "no-store", "X-Fakesite": "stand-in; not affiliated"}


@dataclass
class PendingLogin:
    """One logged-out page instance waiting for its QR to be scanned."""

    client: str
    ref: str
    issued: float
    seen: float
    token: str | None = None
    phone: str | None = None


ACKS = {"server": 1, "device": 2, "read": 3}
"""Delivery acks as WhatsApp counts them (1 sent to the server, 2 on the phone, 3 read)."""


@dataclass
class Message:
    id: str
    sender: str
    to: str
    text: str
    at: float = field(default_factory=time.time)
    ack: int = 1
    version: int = 0
    """The site's change counter when this message last changed (new, or a new ack)."""


class ApiError(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def new_ref() -> str:
    """A QR string shaped like the real site's ("2@<ref>,<key>,<key>,<key>")."""
    parts = [secrets.token_urlsafe(32), *(secrets.token_urlsafe(24) for _ in range(3))]
    return "2@" + ",".join(parts)


def normalize_phone(raw: object) -> str:
    """Digits only; raises ApiError(400) unless it looks like an E.164 number."""
    digits = re.sub(r"\D", "", raw) if isinstance(raw, str) else ""
    if not 5 <= len(digits) <= 15:
        raise ApiError(400, "invalid phone number")
    return digits


class FakeState:
    """Pending logins (rotating refs), live sessions and sent messages."""

    def __init__(self, rotate_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rotate_seconds = rotate_seconds
        self.clock = clock
        self.pending: dict[str, PendingLogin] = {}
        self.retired_refs: set[str] = set()
        self.sessions: dict[str, str] = {}  # token -> account phone
        self.revoked: set[str] = set()
        self.messages: list[Message] = []
        self.version = 0
        self.growth: dict[str, int] = {}  # phone -> MB its page is to allocate once

    def start_login(self) -> PendingLogin:
        now = self.clock()
        login = PendingLogin(secrets.token_hex(8), new_ref(), now, now)
        self.pending[login.client] = login
        return login

    def refresh(self) -> None:
        """Rotate expired refs and drop pending logins whose page went away."""
        now = self.clock()
        for client, login in list(self.pending.items()):
            if now - login.seen > max(PRUNE_AFTER, 3 * self.rotate_seconds):
                self.retired_refs.add(login.ref)
                del self.pending[client]
            elif login.token is None and now - login.issued >= self.rotate_seconds:
                self.retired_refs.add(login.ref)
                login.ref, login.issued = new_ref(), now

    def poll(self, client: str) -> dict[str, Any]:
        self.refresh()
        login = self.pending.get(client)
        if login is None:
            raise ApiError(404, "unknown client; start a new login")
        login.seen = self.clock()
        if login.token is None:
            expires = self.rotate_seconds - (login.seen - login.issued)
            return {"status": "pending", "ref": login.ref, "expires_in": round(expires, 3)}
        del self.pending[client]
        return {"status": "ok", "token": login.token, "phone": login.phone}

    def scan(self, ref: str, phone: str) -> dict[str, Any]:
        self.refresh()
        login = next((p for p in self.pending.values() if p.ref == ref and not p.token), None)
        if login is None:
            if ref in self.retired_refs:
                raise ApiError(410, "qr ref expired or already used")
            raise ApiError(404, "unknown qr ref")
        login.token, login.phone = secrets.token_urlsafe(24), phone
        self.retired_refs.add(ref)
        self.sessions[login.token] = phone
        return {"ok": True, "phone": phone, "client": login.client}

    def account(self, token: object) -> str:
        phone = self.sessions.get(token) if isinstance(token, str) else None
        if phone is None:
            raise ApiError(401, "token revoked or unknown")
        return phone

    def logout(self, token: object) -> None:
        self.account(token)
        assert isinstance(token, str)
        del self.sessions[token]
        self.revoked.add(token)

    def send(self, token: object, to: object, text: object) -> Message:
        sender = self.account(token)
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "empty message")
        to_phone = normalize_phone(to)
        message_id = f"true_{to_phone}@c.us_3EB0{secrets.token_hex(8).upper()}"
        return self._add(Message(message_id, sender, to_phone, text))

    def incoming(self, account: object, sender: object, text: object) -> Message:
        """A contact writes to a logged-in account (as their phone would)."""
        to_phone = normalize_phone(account)
        if to_phone not in self.sessions.values():
            raise ApiError(404, "no logged-in account has that phone number")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "empty message")
        from_phone = normalize_phone(sender)
        message_id = f"false_{from_phone}@c.us_3A{secrets.token_hex(9).upper()}"
        return self._add(Message(message_id, from_phone, to_phone, text))

    def acknowledge(self, message_id: object, ack: object) -> Message:
        """The recipient's phone got (ack "device") or read (ack "read") a sent message."""
        message = next((m for m in self.messages if m.id == message_id), None)
        if message is None:
            raise ApiError(404, "unknown message id")
        if ack not in ACKS:
            raise ApiError(400, f"ack must be one of {', '.join(ACKS)}")
        if ACKS[str(ack)] > message.ack:
            self.version += 1
            message.ack, message.version = ACKS[str(ack)], self.version
        return message

    def _add(self, message: Message) -> Message:
        self.version += 1
        message.version = self.version
        self.messages.append(message)
        return message

    def history(self, token: object) -> list[Message]:
        """The account's messages, both directions."""
        phone = self.account(token)
        return [m for m in self.messages if phone in (m.sender, m.to)]

    def updates(self, token: object, since: int) -> dict[str, Any]:
        """What changed for the account after change number `since` (the page polls this as
        WhatsApp Web listens on its socket)."""
        changed = [m for m in self.history(token) if m.version > since]
        grow = self.growth.pop(self.account(token), 0)
        return {"version": self.version, "messages": [asdict(m) for m in changed], "grow_mb": grow}

    def grow(self, phone: object, megabytes: object) -> int:
        """The account's open page will allocate (and touch) `megabytes` more, once: how a
        leaking WhatsApp Web page looks to the machine."""
        account = normalize_phone(phone)
        if account not in self.sessions.values():
            raise ApiError(404, "no logged-in account has that phone number")
        if not isinstance(megabytes, int) or not 1 <= megabytes <= 16384:
            raise ApiError(400, "mb must be a whole number from 1 to 16384")
        self.growth[account] = self.growth.get(account, 0) + megabytes
        return self.growth[account]

    def snapshot(self) -> dict[str, Any]:
        self.refresh()
        waiting = [p for p in self.pending.values() if p.token is None]
        return {
            "banner": BANNER,
            "rotate_seconds": self.rotate_seconds,
            "refs": [p.ref for p in waiting],
            "pending": [{"client": p.client, "ref": p.ref} for p in waiting],
            "sessions": [{"token": t, "phone": p} for t, p in self.sessions.items()],
            "revoked": sorted(self.revoked),
            "messages": [asdict(m) for m in self.messages],
        }


STATE = web.AppKey("fakesite_state", FakeState)
HEAVY = web.AppKey("fakesite_heavy", HeavyOptions)


def state_of(request: web.Request) -> FakeState:
    return request.app[STATE]


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "body must be JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


@web.middleware
async def api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.error}, status=exc.status, headers=NO_CACHE)
    for name, value in NO_CACHE.items():  # the heavy scripts set their own Cache-Control
        response.headers.setdefault(name, value)
    return response


async def page(request: web.Request) -> web.Response:
    """/, /send and /logout all serve the client; its JS looks at location.pathname. In heavy
    mode (the site's default, or ?heavy=1) with the heavy scripts."""
    return await heavy.render(PAGE, request, request.app[HEAVY])


async def heavy_asset(request: web.Request) -> web.Response:
    return await heavy.serve_asset(request, request.app[HEAVY].script_mb)


async def service_worker(request: web.Request) -> web.Response:
    return await heavy.serve_worker(request, request.app[HEAVY].script_mb)


async def build_heavy_assets(app: web.Application) -> None:
    """A heavy site builds its bundle before it serves (a light one when first asked)."""
    await heavy.assets_async(app[HEAVY].script_mb)


async def login_start(request: web.Request) -> web.Response:
    login = state_of(request).start_login()
    return web.json_response({"client": login.client, "ref": login.ref})


async def login_poll(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).poll(request.query.get("client", "")))


async def scan(request: web.Request) -> web.Response:
    body = await json_body(request)
    ref = body.get("ref")
    if not isinstance(ref, str) or not ref:
        raise ApiError(400, "ref is required")
    phone = normalize_phone(body.get("phone") or DEFAULT_PHONE)
    return web.json_response(state_of(request).scan(ref, phone))


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"phone": state_of(request).account(request.query.get("token"))})


async def logout(request: web.Request) -> web.Response:
    state_of(request).logout((await json_body(request)).get("token"))
    return web.json_response({"ok": True})


async def post_message(request: web.Request) -> web.Response:
    body = await json_body(request)
    message = state_of(request).send(body.get("token"), body.get("to"), body.get("text"))
    return web.json_response(asdict(message))


async def list_messages(request: web.Request) -> web.Response:
    history = state_of(request).history(request.query.get("token"))
    version = state_of(request).version
    return web.json_response({"messages": [asdict(m) for m in history], "version": version})


async def updates(request: web.Request) -> web.Response:
    since = request.query.get("since", "0")
    if not since.isdigit():
        raise ApiError(400, "since must be a whole number")
    return web.json_response(state_of(request).updates(request.query.get("token"), int(since)))


async def incoming(request: web.Request) -> web.Response:
    body = await json_body(request)
    message = state_of(request).incoming(body.get("to"), body.get("from"), body.get("text"))
    return web.json_response(asdict(message))


async def acknowledge(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(asdict(state_of(request).acknowledge(body.get("id"), body.get("ack"))))


async def grow(request: web.Request) -> web.Response:
    body = await json_body(request)
    pending = state_of(request).grow(body.get("phone"), body.get("mb"))
    return web.json_response({"phone": body.get("phone"), "pending_mb": pending})


async def api_state(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).snapshot())


PROBE = """<!DOCTYPE html><title>egress probe (stand-in)</title><div id="probe">probing</div>
<script>
// For the egress guard's tests: reach each URL given in ?urls= every way a page can.
const urls = new URLSearchParams(location.search).get("urls").split(",");
for (const url of urls) {
  fetch(url).catch(() => {});
  const img = document.createElement("img"); img.src = url + "?img"; document.body.append(img);
  try { new WebSocket(url.replace(/^http/, "ws") + "/ws"); } catch (e) {}
}
</script>"""


async def probe(request: web.Request) -> web.Response:
    return web.Response(text=PROBE, content_type="text/html")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query.get("to", "/"))


def create_app(
    qr_rotate_seconds: float = 20.0, heavy: HeavyOptions | None = None
) -> web.Application:
    """The stand-in site; every app instance has its own in-memory state. `heavy`: heavy mode's
    sizes, and whether pages are heavy unless they ask otherwise (by default only `?heavy=1`)."""
    if qr_rotate_seconds <= 0:
        raise ValueError("qr_rotate_seconds must be positive")
    app = web.Application(middlewares=[api_errors])
    app[STATE] = FakeState(qr_rotate_seconds)
    app[HEAVY] = heavy or HeavyOptions()
    if app[HEAVY].default:
        app.on_startup.append(build_heavy_assets)
    app.router.add_get("/", page)
    app.router.add_get("/send", page)
    app.router.add_get("/logout", page)
    app.router.add_post("/api/login/start", login_start)
    app.router.add_get("/api/login/poll", login_poll)
    app.router.add_post("/api/scan", scan)
    app.router.add_get("/api/whoami", whoami)
    app.router.add_post("/api/logout", logout)
    app.router.add_post("/api/messages", post_message)
    app.router.add_get("/api/messages", list_messages)
    app.router.add_get("/api/updates", updates)
    app.router.add_post("/api/incoming", incoming)
    app.router.add_post("/api/ack", acknowledge)
    app.router.add_post("/api/grow", grow)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/probe", probe)
    app.router.add_get("/redirect", redirect)
    app.router.add_get(ASSET_PREFIX + "{name}", heavy_asset)
    app.router.add_get(WORKER_PATH, service_worker)
    return app
