"""Render the complete nginx.conf of the front from a routing table. No I/O beyond reading the
Jinja2 template; writing, testing and reloading live in `apply` and `reload`.

Every value is checked before it reaches the template, so a bad address or session id raises
`RenderError` here instead of producing a file nginx rejects (or, worse, one it accepts with a
different meaning). The same table and settings always render the same bytes.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from autoscaler.front.table import RouteShard, RouteTable
from chatscale_contract import ids
from chatscale_contract.config import NginxSettings, parse_size
from chatscale_contract.ids import SHARD_ID
from chatscale_contract.ring import shard_order

TEMPLATE = "nginx.conf.j2"
RING_UPSTREAM = "chatscale_ring"
ANY_UPSTREAM = "chatscale_any"
READ_UPSTREAM = "chatscale_read"
ACTIVATOR_UPSTREAM = "chatscale_activator"
UNAVAILABLE = "unavailable"
"""Map value for requests no upstream can take when no activator is live; the template answers
them 503 before proxying."""

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])$")
_PATH = re.compile(r"^[A-Za-z0-9/._+@=,-]+$")
_CANONICAL = re.compile(ids.PATTERN)
_MAX_ERRORS = 10
# A map entry takes a pointer plus its key (+2) aligned to 8 bytes in nginx's hash buckets: 80
# bytes for a 64-character id, so a 512-byte bucket holds at least six entries.
_MAP_BUCKET = 512


class RenderError(ValueError):
    """The table or settings hold a value that must not reach nginx.conf; says which and why."""


def map_hash_sizes(entries: int) -> tuple[int, int]:
    """(map_hash_max_size, map_hash_bucket_size) letting nginx build the map hash at once.

    nginx searches hash sizes upward and, past 10,000, starts 1,000 below the maximum; four
    buckets per key with room for several worst-case keys each makes that first size fit.
    Purely computational, no side effects.
    """
    return max(16384, 4 * entries), _MAP_BUCKET


def render(table: RouteTable, settings: NginxSettings, template_dir: Path) -> str:
    """The complete nginx.conf for `table`; raises RenderError for any unsafe value."""
    problems = [*check_table(table), *check_settings(settings)]
    if problems:
        raise RenderError(_summary(problems))
    try:
        template = _environment(str(template_dir.resolve())).get_template(TEMPLATE)
        return template.render(**context(table, settings))
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template {exc.filename}:{exc.lineno}: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {TEMPLATE}: {exc}") from exc


def context(table: RouteTable, settings: NginxSettings) -> dict[str, Any]:
    """Template variables for an already checked table. Purely computational, no side effects."""
    shards = sorted(table.shards, key=lambda s: shard_order(s.id))
    ring = [s.addr for s in shards if s.in_ring]
    pool = [s.addr for s in shards if s.accepting]
    max_size, bucket_size = map_hash_sizes(len(table.exceptions))
    # What no shard can take goes to an activator, which holds it until one can.
    nowhere = ACTIVATOR_UPSTREAM if table.activators else UNAVAILABLE
    return {
        "version": table.version,
        "settings": settings,
        "worker_processes": settings.worker_processes or "auto",
        "ms": _milliseconds,
        "body_size": parse_size(settings.client_max_body_size),
        "id_pattern": ids.PATTERN,
        "shards": shards,
        "backups": backups(shards, ring),
        "ring": ring,
        "pool": pool,
        "ring_upstream": RING_UPSTREAM if ring else nowhere,
        "any_upstream": ANY_UPSTREAM if pool else nowhere,
        # Reads without a session id (the fleet-wide list) go to any shard in the ring, full
        # ones included: a read needs no room, and must not wake or grow the fleet.
        "read_upstream": READ_UPSTREAM if ring else nowhere,
        "unavailable": UNAVAILABLE,
        "activators": table.activators,
        "activator_upstream": ACTIVATOR_UPSTREAM,
        "exceptions": len(table.exceptions),
        "map_entries": table.map_entries,
        "map_hash_max_size": max_size,
        "map_hash_bucket_size": bucket_size,
    }


def backups(shards: list[RouteShard], ring: list[str], count: int = 2) -> dict[str, list[str]]:
    """For each shard, the `count` ring members after it (in shard order) that take its requests
    when it refuses the connection: a shard stopped after a drain, or dead, before the next
    table reaches nginx. They forward each request to the session's owner (shard/routing.py)
    or hold it while the session moves (shard/handoff.py). Purely computational."""
    members = set(ring)
    order = [s.addr for s in shards]
    result: dict[str, list[str]] = {}
    for i, shard in enumerate(shards):
        after = (a for a in order[i + 1 :] + order[:i] if a in members and a != shard.addr)
        result[shard.id] = list(itertools.islice(after, count))
    return result


def check_table(table: RouteTable) -> list[str]:
    """Every reason `table` must not be rendered. Purely computational, no side effects."""
    problems = [p for shard in table.shards for p in _check_shard(shard)]
    problems += _duplicates("shard id", [s.id for s in table.shards])
    problems += _duplicates("address", [s.addr for s in table.shards])
    for addr in table.activators:
        reason = check_addr(addr)
        if reason:
            problems.append(f"activator addr {reason}")
    problems += _duplicates("activator", table.activators)
    known = {s.id for s in table.shards}
    canonical = _CANONICAL.fullmatch
    for sid, owner in table.exceptions.items():
        if not canonical(sid):
            problems.append(f"exception {sid!r}: {_id_problem(sid)}")
        if owner not in known:
            problems.append(f"exception {sid!r}: target {owner!r} is not a rendered shard")
    return problems


def check_settings(settings: NginxSettings) -> list[str]:
    """Reasons the nginx settings cannot be written into nginx.conf. Purely computational."""
    paths = {
        "pid_path": settings.pid_path,
        "runtime_dir": settings.runtime_dir,
        "access_log": settings.access_log,
        "error_log": settings.error_log,
    }
    return [
        f"nginx.{key}: {value!r} must be a path of letters, digits and /._+@=,-"
        for key, value in paths.items()
        if not _PATH.match(value)
    ]


def check_addr(addr: str) -> str | None:
    """Why `addr` is not a safe host:port for a `server` directive; None when it is.

    Purely computational, no side effects.
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        return f"{addr!r} is not host:port"
    if not _HOST.match(host):
        return f"{addr!r}: host {host!r} is not a DNS name, IPv4 address or [IPv6] address"
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536 and port[0] != "0"):
        return f"{addr!r}: port {port!r} is not a number from 1 to 65535"
    return None


def _check_shard(shard: RouteShard) -> list[str]:
    problems = []
    if not SHARD_ID.match(shard.id):
        problems.append(f"shard {shard.id!r}: not a shard id (shard-<n>)")
    reason = check_addr(shard.addr)
    if reason:
        problems.append(f"shard {shard.id!r}: addr {reason}")
    return problems


def _id_problem(sid: str) -> str:
    try:
        ids.check_session_id(sid)
    except ids.InvalidSessionId as exc:
        return str(exc)
    return "not a canonical session id"  # unreachable while both use the same pattern


def _duplicates(what: str, values: Iterable[str]) -> list[str]:
    counts = Counter(values)
    return [f"{what} {v!r} appears {n} times" for v, n in sorted(counts.items()) if n > 1]


def _summary(problems: list[str]) -> str:
    lines = problems[:_MAX_ERRORS]
    if len(problems) > len(lines):
        lines.append(f"... and {len(problems) - len(lines)} more")
    return f"refusing to render nginx.conf ({len(problems)} problem(s)):\n  " + "\n  ".join(lines)


def _milliseconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@lru_cache(maxsize=8)
def _environment(template_dir: str) -> jinja2.Environment:
    # Jinja re-reads a template whose file changed (auto_reload), so caching the environment
    # costs nothing in correctness and saves re-parsing the template on every render.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
