"""Restoring a session's snapshot in its own page instead of through Playwright's hidden page.

`BrowserContext(storage_state=...)` applies localStorage and IndexedDB by opening a hidden page
per context and navigating it to each origin: one more renderer started and stopped per restored
session, which made restores cost 1.2-1.5x a create (docs/benchmarks.md). Here the context gets
only the cookies (no page needed for those), and the site's own origin is written by restore.js,
an init script in the session's page that runs before the site's first script. Origins other
than the site's (rare: an embedded frame's storage) still go through Playwright, since the
session's page may never load them and they would be lost from the next snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

RESTORE = Path(__file__).with_name("restore.js").read_text()


@dataclass(frozen=True)
class Restore:
    """A snapshot split for opening: what the context takes, and what the page applies."""

    context_state: dict[str, Any] | None
    """For `new_context(storage_state=...)`: the cookies, and origins other than the site's."""
    page_script: str | None
    """An init script for the session's page writing the site origin's storage; None if empty."""


def split(state: dict[str, Any] | None, url: str) -> Restore:
    """Split a snapshot (Playwright's storage_state format) for the session whose site is `url`."""
    if state is None:
        return Restore(None, None)
    site = origin_of(url)
    origins = [o for o in state.get("origins", []) if isinstance(o, dict)]
    own = [o for o in origins if o.get("origin") == site]
    others = [o for o in origins if o.get("origin") != site]
    context_state = {"cookies": state.get("cookies", []), "origins": others}
    if not own or not (own[0].get("localStorage") or own[0].get("indexedDB")):
        return Restore(context_state, None)
    # The data as a string for JSON.parse, not as an object literal: V8's JSON parser is the
    # lighter one for megabytes of data (measured no slower on the heavy page, docs/benchmarks.md).
    data = json.dumps(json.dumps(own[0]))
    return Restore(context_state, f"({RESTORE})(JSON.parse({data}));")


def origin_of(url: str) -> str:
    """The origin as the browser names it: scheme://host[:port], the port only if not default."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parts.port
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")
