"""Dead letters: events a receiver did not take after its last attempt. Listed on the status page
and through the status API; a replay puts one (or all) back in the outbox for that receiver
only, under the event's first id, so a receiver that already has it can tell."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import OUTBOX_MAXLEN

_KEPT = ("event", "session", "payload", "metadata", "origin")


async def dead_letters(client: aioredis.Redis, keys: Keys, count: int = 100) -> dict[str, Any]:
    """The newest `count` dead letters (newest first) and how many there are."""
    total = await client.xlen(keys.dead_letters)
    rows = await client.xrevrange(keys.dead_letters, count=count)
    letters = [{"id": stream_id, **fields} for stream_id, fields in rows]
    return {"total": total, "letters": letters}


async def replay(client: aioredis.Redis, keys: Keys, letter_id: str | None) -> int:
    """Put one dead letter (or, with None, every one) back in the outbox; returns how many."""
    if letter_id is None:
        rows = await client.xrange(keys.dead_letters)
    else:
        rows = await client.xrange(keys.dead_letters, letter_id, letter_id)
    for stream_id, fields in rows:
        again = {k: fields[k] for k in _KEPT if k in fields}
        again["only_url"] = fields.get("url", "")
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.outbox, again, maxlen=OUTBOX_MAXLEN, approximate=True)
            pipe.xdel(keys.dead_letters, stream_id)
            await pipe.execute()
    return len(rows)
