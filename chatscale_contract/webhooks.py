"""Webhooks: what an event is, where it goes, and what the receiver gets. Pure; the shard writes
events (registry.py), the autoscaler delivers them (autoscaler/webhooks/).

An event is an entry of the outbox stream (`Keys.outbox`), written by the same Redis script as
the change it reports, so a change is never recorded without its event. The body a receiver gets
follows WAHA's webhook format (`id`, `timestamp`, `event`, `session`, `metadata`, `me`,
`payload`, `engine`), and so do its headers (`X-Webhook-Request-Id`, `X-Webhook-Timestamp`, and
with a key `X-Webhook-Hmac` = HMAC-SHA512 of the raw body, `X-Webhook-Hmac-Algorithm`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError

SESSION_STATUS = "session.status"
MESSAGE = "message"
MESSAGE_ANY = "message.any"
MESSAGE_ACK = "message.ack"
EVENTS = frozenset({SESSION_STATUS, MESSAGE, MESSAGE_ANY, MESSAGE_ACK})
"""Events chatscale emits: status changes, and for drivers that see them (whatsapp) incoming
messages, messages in both directions, and acks of sent ones."""
WAHA_ONLY_EVENTS = frozenset(
    {
        "message.reaction", "message.ack.group", "message.revoked", "message.edited",
        "message.waiting", "state.change", "group.join", "group.leave", "group.v2.join",
        "group.v2.leave", "group.v2.update", "group.v2.participants", "presence.update",
        "poll.vote", "poll.vote.failed", "chat.archive", "call.received", "call.accepted",
        "call.rejected", "label.upsert", "label.deleted", "label.chat.added",
        "label.chat.deleted", "event.response", "event.response.failed", "engine.event",
    }
)  # fmt: skip
"""WAHA's other events: a receiver may list them (WAHA clients subscribe to many by default);
chatscale never sends them."""
ENGINE = "chatscale"
OUTBOX_MAXLEN = 100_000
"""The outbox keeps about this many newest events (trimmed on write): a deliverer that falls
further behind than that, or a fleet without one, loses the oldest."""
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


def _check_events(value: list[str]) -> list[str]:
    unknown = [e for e in value if e not in EVENTS | WAHA_ONLY_EVENTS and e != "*"]
    if unknown:
        known = ", ".join(sorted(EVENTS))
        raise ValueError(f"unknown event(s) {', '.join(unknown)}; known: {known}, or *")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Retries(_Frozen):
    policy: Literal["constant", "linear", "exponential"] = "exponential"
    """How the wait grows between attempts: d, d*n, or d*2^(n-1) (capped at max_delay_seconds)."""
    delay_seconds: float = Field(
        default=2.0, ge=0, le=3600, validation_alias=AliasChoices("delay_seconds", "delaySeconds")
    )
    attempts: int = Field(default=10, ge=1, le=100)
    """Attempts in all, the first included; after the last the event goes to the dead letters."""
    max_delay_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        validation_alias=AliasChoices("max_delay_seconds", "maxDelaySeconds"),
    )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if self.policy == "constant":
            wait = self.delay_seconds
        elif self.policy == "linear":
            wait = self.delay_seconds * attempt
        else:
            wait = self.delay_seconds * 2 ** min(attempt - 1, 30)
        return min(wait, self.max_delay_seconds)


def _check_header_value(value: str) -> str:
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise ValueError("a header value cannot hold control characters (a newline?)")
    return value


class Header(_Frozen):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    value: Annotated[str, AfterValidator(_check_header_value)]


class Hmac(_Frozen):
    key: str = Field(min_length=1)


class Webhook(_Frozen):
    """A receiver. Keys as in config.yaml, or in WAHA's camelCase (`delaySeconds`,
    `customHeaders`), as WAHA clients send them in a session's `config.webhooks`."""

    url: Annotated[str, AfterValidator(_check_url)]
    events: Annotated[list[str], AfterValidator(_check_events)] = Field(
        default_factory=lambda: [SESSION_STATUS], min_length=1
    )
    """Events sent to this receiver; `*` for all."""
    hmac: Hmac | None = None
    retries: Retries = Retries()
    custom_headers: list[Header] = Field(
        default_factory=list, validation_alias=AliasChoices("custom_headers", "customHeaders")
    )
    timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        validation_alias=AliasChoices("timeout_seconds", "timeoutSeconds"),
    )
    """One attempt fails when the receiver has not answered within this."""

    def wants(self, event: str) -> bool:
        return "*" in self.events or event in self.events


@dataclass(frozen=True)
class Event:
    """One outbox entry: `stream_id` is Redis's id for it (time-ordered, unique)."""

    stream_id: str
    event: str
    session: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    only_url: str = ""
    """Set on a replayed dead letter: deliver to this receiver only."""
    origin: str = ""
    """Set on a replayed dead letter: the stream id the event first had (its id and time)."""
    salt: str = ""
    """The fleet's own random value (Keys.outbox_salt): two fleets' events never share an id."""
    hooks: tuple[Webhook, ...] = ()
    """The session's own receivers, as they were when the event was written."""
    me: str = ""
    """The logged-in account's phone number, when known."""

    @classmethod
    def parse(cls, stream_id: str, fields: Mapping[str, str], salt: str = "") -> Event:
        """Raises ValueError on an entry that is not an event (reported, then dropped)."""
        try:
            return cls(
                stream_id,
                fields["event"],
                fields["session"],
                _object(fields.get("payload", "{}"), "payload"),
                _object(fields.get("metadata", "{}"), "metadata"),
                fields.get("only_url", ""),
                fields.get("origin", ""),
                salt,
                tuple(stored_hooks(fields.get("hooks", ""))),
                fields.get("me", ""),
            )
        except (KeyError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"outbox entry {stream_id} is not an event: {exc}") from None

    @property
    def first_id(self) -> str:
        return self.origin or self.stream_id

    @property
    def timestamp_ms(self) -> int:
        """When the change happened (Redis's clock, as the stream id has it)."""
        return int(self.first_id.split("-")[0])

    @property
    def id(self) -> str:
        """`evt_` + a ULID made from the stream id and the fleet's salt: the same event has the
        same id on every attempt and every replay, so a receiver can drop repeats (delivery is
        at least once), and another fleet's event never has it."""
        entropy = hashlib.sha256(f"{self.salt}/{self.first_id}".encode()).digest()
        return "evt_" + ulid(self.timestamp_ms, entropy)

    def body(self) -> bytes:
        document = {
            "id": self.id,
            "timestamp": self.timestamp_ms,
            "event": self.event,
            "session": self.session,
            "metadata": self.metadata,
            "me": {"id": f"{self.me}@c.us", "pushName": ""} if self.me else None,
            "payload": self.payload,
            "engine": ENGINE,
        }
        return json.dumps(document, separators=(",", ":")).encode()


def ulid(ms: int, entropy: bytes) -> str:
    """A ULID (26 Crockford base-32 characters): 48 bits of milliseconds, 80 bits of entropy."""
    value = (ms & (2**48 - 1)) << 80 | int.from_bytes(entropy[:10], "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def headers(webhook: Webhook, event: Event, body: bytes) -> dict[str, str]:
    """What the receiver gets besides the body."""
    out = {h.name: h.value for h in webhook.custom_headers}
    out.update(
        {
            "Content-Type": "application/json",
            "X-Webhook-Request-Id": event.id,
            "X-Webhook-Timestamp": str(event.timestamp_ms),
        }
    )
    if webhook.hmac is not None:
        out["X-Webhook-Hmac"] = sign(webhook.hmac.key, body)
        out["X-Webhook-Hmac-Algorithm"] = "sha512"
    return out


def sign(key: str, body: bytes) -> str:
    return hmac.new(key.encode(), body, hashlib.sha512).hexdigest()


MAX_SESSION_HOOKS = 5


def session_hooks(raw: object) -> list[Webhook]:
    """A session's own receivers as a client gave them (a list of receivers, WAHA's form
    accepted); ValueError names the first wrong field, e.g. `webhooks[0].url: ...`."""
    if not isinstance(raw, list):
        raise ValueError("webhooks must be a list of receivers")
    if len(raw) > MAX_SESSION_HOOKS:
        raise ValueError(f"webhooks: at most {MAX_SESSION_HOOKS} receivers per session")
    hooks = []
    for n, item in enumerate(raw):
        try:
            hooks.append(Webhook.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            raise ValueError(f"webhooks[{n}]{where}: {first['msg']}") from None
    return hooks


def hooks_text(hooks: list[Webhook]) -> str:
    """How a session's receivers are stored (in its record, and in each of its events)."""
    return json.dumps([h.model_dump() for h in hooks], separators=(",", ":")) if hooks else ""


def _object(text: str, name: str) -> dict[str, Any]:
    """`text` read as a JSON object; ValueError naming `name` for anything else."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not a JSON object")
    return value


def stored_hooks(text: str) -> list[Webhook]:
    """The receivers `hooks_text` stored; none for empty or unreadable text (never raises: a
    damaged copy must not cost the event its other receivers)."""
    if not text:
        return []
    try:
        return [Webhook.model_validate(item) for item in json.loads(text)]
    except (ValueError, TypeError):
        return []
