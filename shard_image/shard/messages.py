"""Message events: what the whatsapp driver's observer (observer.js) reports from a session's
page becomes `message`, `message.any` and `message.ack` events in the outbox.

The page reports every message element it renders; Redis remembers which messages (and which
acks) of the session were already turned into events (`Keys.messages_seen`), in the same script
that writes the events. So a page reloaded on another shard after a crash reports its messages
again and only the ones never announced become events: none lost, none twice. The first report
after a login is the history the page opened with; it is remembered, not announced.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import OUTBOX_MAXLEN
from shard.registry import EMIT_LUA

OBSERVER = Path(__file__).with_name("observer.js").read_text()
MAX_BATCH = 500
MAX_BODY = 65536
SEEN_KEEP = 5000
"""Newest entries kept per session: far more than a page shows at once."""
SEEN_DAYS = 30
ACK_NAMES = {-1: "ERROR", 0: "PENDING", 1: "SERVER", 2: "DEVICE", 3: "READ", 4: "PLAYED"}
_ID = re.compile(r"^(true|false)_([0-9A-Za-z.@:+-]{3,100})_([0-9A-Za-z]{4,100})$")


class BadReport(ValueError):
    """The page reported something that is not a message batch (a changed site, or a hostile
    page): logged and dropped."""


@dataclass(frozen=True)
class Seen:
    """One message as the page showed it. `chat` is the other party (`<phone>@c.us`)."""

    id: str
    from_me: bool
    chat: str
    body: str
    ack: int
    timestamp: int

    def payload(self, me: str) -> dict[str, Any]:
        """WAHA's WAMessage."""
        mine = f"{me}@c.us" if me else None
        return {
            "id": self.id,
            "timestamp": self.timestamp,
            "from": mine if self.from_me else self.chat,
            "fromMe": self.from_me,
            "source": "app",
            "to": self.chat if self.from_me else mine,
            "participant": None,
            "body": self.body,
            "hasMedia": False,
            "media": None,
            "ack": self.ack if self.from_me else None,
            "ackName": ACK_NAMES.get(self.ack) if self.from_me else None,
        }


@dataclass(frozen=True)
class Batch:
    first: bool
    messages: tuple[Seen, ...]


def parse(report: object, now: float | None = None) -> Batch:
    """A batch from the page; BadReport if it is not one. Ids not in WhatsApp's form are
    skipped (elements the selector matched that are not messages)."""
    if not isinstance(report, dict) or not isinstance(report.get("messages"), list):
        raise BadReport("not a message batch")
    items = report["messages"]
    if len(items) > MAX_BATCH:
        raise BadReport(f"more than {MAX_BATCH} messages in one batch")
    clock = int(now if now is not None else time.time())
    seen = []
    for item in items:
        if not isinstance(item, dict):
            raise BadReport("a message is not an object")
        match = _ID.match(str(item.get("id", "")))
        if match is None:
            continue
        ack, stamp = item.get("ack"), item.get("t")
        seen.append(
            Seen(
                id=match.group(0),
                from_me=match.group(1) == "true",
                chat=match.group(2),
                body=str(item.get("body", ""))[:MAX_BODY],
                ack=ack if isinstance(ack, int) and -1 <= ack <= 4 else 0,
                timestamp=int(stamp) if isinstance(stamp, int | float) and stamp > 0 else clock,
            )
        )
    return Batch(report.get("first") is True, tuple(seen))


# KEYS: seen, outbox, session. ARGV: session, outbox maxlen, first, now, keep, ttl, then four
# per message: id, ack, from me (1/0), payload. The first batch of a login is remembered only.
_RECORD = (
    EMIT_LUA
    + """
local seen, outbox, skey = KEYS[1], KEYS[2], KEYS[3]
local sid, maxlen, first, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local keep, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', skey) == 0 then return 0 end
local announce = redis.call('ZSCORE', seen, '~primed') or first ~= '1'
local events = 0
for i = 7, #ARGV, 4 do
  local id, ack, mine, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local new = redis.call('ZADD', seen, 'NX', now, id) == 1
  local acked = redis.call('ZADD', seen, 'NX', now, id .. ':' .. ack) == 1
  if announce and new then
    if mine == '0' then emit_event(outbox, maxlen, skey, sid, 'message', payload) end
    emit_event(outbox, maxlen, skey, sid, 'message.any', payload)
    events = events + 1
  elseif announce and acked and mine == '1' then
    emit_event(outbox, maxlen, skey, sid, 'message.ack', payload)
    events = events + 1
  end
end
redis.call('ZADD', seen, now, '~primed')
redis.call('ZREMRANGEBYRANK', seen, 0, -keep - 1)
redis.call('EXPIRE', seen, ttl)
return events
"""
)


class Inbox:
    """Turns a session's page reports into events."""

    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.keys = keys
        self._record = client.register_script(_RECORD)

    async def record(self, sid: str, batch: Batch, me: str) -> int:
        """Remember the batch's messages; returns how many became events."""
        args: list[Any] = [sid, OUTBOX_MAXLEN, "1" if batch.first else "0", repr(time.time())]
        args += [SEEN_KEEP, SEEN_DAYS * 86400]
        for seen in batch.messages:
            payload = json.dumps(seen.payload(me), separators=(",", ":"))
            args += [seen.id, seen.ack, "1" if seen.from_me else "0", payload]
        keys = [self.keys.messages_seen(sid), self.keys.outbox, self.keys.session(sid)]
        return int(await self._record(keys=keys, args=args))


def observer_script(selectors: dict[str, str]) -> str:
    """observer.js with the session's selectors."""
    return OBSERVER.replace("__SELECTORS__", json.dumps(selectors))
