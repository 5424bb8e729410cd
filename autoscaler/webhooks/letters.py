"""Dead letters: events a receiver did not take after its last attempt. Listed on the status page
and through the status API; a replay puts one (or all) back in the outbox for that receiver
only, under the event's first id, so a receiver that already has it can tell."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from chatscale_contract.keys import Keys
from chatscale_contract.webhooks import OUTBOX_MAXLEN

_KEPT = ("event", "session", "payload", "metadata", "origin", "hooks", "me")


async def dead_letters(client: aioredis.Redis, keys: Keys, count: int = 100) -> dict[str, Any]:
    """The newest `count` dead letters (newest first) and how many there are."""
    total = await client.xlen(keys.dead_letters)
    rows = await client.xrevrange(keys.dead_letters, count=count)
    letters = [{"id": stream_id, **fields} for stream_id, fields in rows]
    return {"total": total, "letters": letters}


async def replay(
    client: aioredis.Redis, keys: Keys, letter_id: str | None, urls: Collection[str]
) -> tuple[int, list[str]]:
    """Put one dead letter (or, with None, every one) back in the outbox. Letters for a receiver
    that is no longer configured (not in `urls`) stay; returns how many went and the receivers
    of those that stayed. Raises ValueError for an id that is not a stream id."""
    try:
        if letter_id is None:
            rows = await client.xrange(keys.dead_letters)
        else:
            rows = await client.xrange(keys.dead_letters, letter_id, letter_id)
    except ResponseError as exc:
        raise ValueError(f"{letter_id!r} is not a dead letter id ({exc})") from None
    replayed, kept = 0, []
    for stream_id, fields in rows:
        url = fields.get("url", "")
        if url not in urls and not fields.get("hooks"):  # a session's own receiver goes along
            kept.append(url)
            continue
        again = {k: fields[k] for k in _KEPT if k in fields}
        again["only_url"] = url
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.outbox, again, maxlen=OUTBOX_MAXLEN, approximate=True)
            pipe.xdel(keys.dead_letters, stream_id)
            await pipe.execute()
        replayed += 1
    return replayed, kept
