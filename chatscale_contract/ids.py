"""The one allowed spelling of a session id, and the shape of shard ids.

Purely computational, no side effects.

nginx `map` keys match case-insensitively, so two ids differing only in case would reach the same
map entry but different ring positions (the hash is case-sensitive). Allowing exactly one spelling
per session (lowercase) removes the ambiguity at the door instead of in every component.
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_LENGTH = 64
PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
_SESSION_ID = re.compile(PATTERN)
SHARD_ID = re.compile(r"^shard-([1-9][0-9]{0,5})$")


class InvalidSessionId(ValueError):
    """The id is not in canonical form; the message says why and, where possible, the fix."""


def check_session_id(raw: object) -> str:
    """Return `raw` if it is a canonical session id, else raise InvalidSessionId."""
    if not isinstance(raw, str) or not raw:
        raise InvalidSessionId("session id must be a non-empty string")
    if _SESSION_ID.fullmatch(raw):
        return raw
    if len(raw) > MAX_LENGTH:
        raise InvalidSessionId(f"session id is longer than {MAX_LENGTH} characters")
    lowered = raw.lower()
    if lowered != raw and _SESSION_ID.fullmatch(lowered):
        raise InvalidSessionId(f"session ids are lowercase; use {lowered!r}")
    raise InvalidSessionId(
        "session id must be 1-64 characters of a-z, 0-9, '_' and '-',"
        " starting with a letter or digit"
    )


def shard_id(number: int) -> str:
    """The stable id of shard number `number` (1-based); also the suffix of its container name."""
    return f"shard-{number}"


@lru_cache(maxsize=4096)
def shard_number(sid: str) -> int:
    """Inverse of `shard_id`; raises ValueError for ids this system did not make."""
    match = SHARD_ID.match(sid)
    if not match:
        raise ValueError(f"not a shard id: {sid!r}")
    return int(match.group(1))


def is_shard_id(sid: str) -> bool:
    return SHARD_ID.match(sid) is not None
