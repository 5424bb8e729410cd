"""WAHA session names and chatscale session ids. Pure.

WAHA accepts names such as `default`, `Sales_EU` or `user-42`; chatscale ids are lowercase (see
chatscale_contract/ids.py: nginx matches map keys without regard to case, the ring hash does not).
The mapping is one-to-one:

- a name that already is a valid id (lowercase) is its own id: `sales-eu` -> `sales-eu`;
- any other valid name gets its lowercase form plus `-` and 8 characters of a hash of the exact
  name: `Sales_EU` -> `sales_eu-<hash>`, so `Sales_EU` and `SALES_EU` are two sessions.

The record keeps the name it was created with. A name whose id already belongs to a session of
another name is refused (409), never merged: collisions are loud, not silent.
"""

from __future__ import annotations

import base64
import hashlib
import re

from chatscale_contract.ids import MAX_LENGTH, check_session_id

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
HASH_LENGTH = 8
MAX_NAME = MAX_LENGTH
MAX_MIXED_NAME = MAX_LENGTH - HASH_LENGTH - 1
"""A name with capitals must leave room for its hash suffix."""
DEFAULT_NAME = "default"
"""The name WAHA gives a session created without one."""


class BadName(ValueError):
    """The name is not one WAHA and chatscale both accept; the message says why."""


class NoSession(LookupError):
    """No session of that name (404)."""


class NameTaken(LookupError):
    """Another session's name maps to the same id (409)."""


def session_id(name: object) -> str:
    """The chatscale id of a WAHA session name; BadName when the name is not acceptable."""
    if not isinstance(name, str) or not name:
        raise BadName("session name must be a non-empty string")
    if not NAME.fullmatch(name):
        raise BadName(
            "session name must be letters, digits, '_' and '-', starting with a letter or digit"
        )
    if name == name.lower():
        if len(name) > MAX_NAME:
            raise BadName(f"session name is longer than {MAX_NAME} characters")
        return check_session_id(name)
    if len(name) > MAX_MIXED_NAME:
        raise BadName(f"a session name with capitals is at most {MAX_MIXED_NAME} characters")
    digest = hashlib.sha256(name.encode()).digest()
    suffix = base64.b32encode(digest).decode().lower()[:HASH_LENGTH]
    return check_session_id(f"{name.lower()}-{suffix}")


def name_of(sid: str, record: dict[str, str]) -> str:
    """The name a WAHA client knows a session by: the one it was created with, else its id."""
    return record.get("name") or sid


def same_session(name: str, sid: str, record: dict[str, str]) -> bool:
    """Whether `record` (stored under `sid`) is the session called `name`: False when another
    name maps to the same id."""
    return name_of(sid, record) == name
