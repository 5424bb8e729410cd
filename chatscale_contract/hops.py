"""How a request moves between the fronts, the shards and the activators.

A request normally goes client -> nginx -> the shard holding its session. Two detours exist: a
shard passes it to the shard that really holds the session (or has room for a new one), and when
no shard can take it at all, nginx or the shard hands it to an activator, which holds it until a
shard can. These rules keep the detours finite and consistent on both sides.
Purely computational, no side effects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from chatscale_contract import ids

FORWARDED_BY = "X-Chatscale-Forwarded-By"
"""Set on every request a shard or an activator passes on. A shard never passes such a request
on again (no loops): it answers it itself, 503 when it cannot."""

ADOPT = "X-Chatscale-Adopt"
"""Set on the PUT that asks a shard to take a released session (a drain's hand-off, the
autoscaler placing an orphan). The shard then only takes a session that still exists and should
run: a session deleted or stopped while it moved must not come back as a new one."""

NO_ROOM = "X-Chatscale-No-Room"
"""Set on the 503 a shard answers for a passed-on create it cannot take after all (it filled up
or began draining since the heartbeat the sender placed it by). The shard that passed it on then
tries the next shard with room; an activator just waits for its next chance, as for any 503."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that describe one connection, not the request; never copied when passing one on."""

PASS_BACK = ("Content-Type", "Retry-After", "X-Shard-Id", "Location")
"""Response headers copied back to the client when a request was passed on."""

ACTIVATOR_REFRESH = 2.0
"""Seconds between two registrations of a running activator (cs:activators)."""
ACTIVATOR_TTL = 10.0
"""An activator not registered for this long is gone: nginx and shards stop handing it work."""
MAX_HOLD = 120.0
"""The longest an activator may hold a request (activator.hold_timeout's upper bound); a shard
handing a request over waits longer than this for the answer."""
WAKE = "~wake"
"""The demand recorded for a held request that names no session (never a valid session id)."""

_PATH_ID = re.compile(rf"/api/sessions/({ids.PATTERN})(?:/|\Z)")
_ID = re.compile(ids.PATTERN)


def routed_session_id(path: str, headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The session id nginx routes a request by, "" if none: from the path
    /api/sessions/{id}/..., else the X-Session-Id header, else the session_id query parameter;
    only canonical ids count (the same rules as the maps in nginx.conf.j2)."""
    match = _PATH_ID.match(path)
    if match:
        return match.group(1)
    for value in (headers.get("X-Session-Id", ""), query.get("session_id", "")):
        if _ID.fullmatch(value):
            return value
    return ""


def passed_headers(headers: Mapping[str, str], by: str) -> dict[str, str]:
    """The headers to send when passing a request on: the client's, minus hop-by-hop ones, plus
    who passed it."""
    kept = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
    kept[FORWARDED_BY] = by
    return kept
