"""The consistent-hash ring nginx builds for `hash $session_id consistent`, computed in Python.

nginx's `ngx_http_upstream_hash_module` places every server of a consistent-hash upstream at 160
points per unit of weight on a 32-bit circle (ketama, compatible with Cache::Memcached::Fast) and
sends a key to the first point at or after crc32(key), wrapping around. This module reproduces that
placement exactly, so shards and the autoscaler know which shard nginx picks for a session without
asking nginx. Every server here has weight 1 and is assumed up (nginx would skip a failed peer and
walk on clockwise, which is what `Ring.walk` yields).

Two details decide agreement with nginx and are easy to miss:
- a point is crc32(host, b"\\0", port, previous point as 4 little-endian bytes), where host and port
  come from splitting the `server` string exactly as written (so "localhost:80" and
  "127.0.0.1:80" are different rings even when they reach the same socket);
- two servers can land on the same 32-bit point; nginx sorts points with a stable sort (glibc) and
  keeps the first, i.e. the server listed first in the upstream block. The renderer lists servers
  in `shard_order`, and so does this class.

Purely computational, no side effects.
"""

from __future__ import annotations

import hashlib
import zlib
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from functools import lru_cache

from chatscale_contract.ids import SHARD_ID

POINTS_PER_WEIGHT = 160
"""nginx's ketama points per unit of server weight (a constant in the nginx source)."""


def shard_order(shard: str) -> tuple[int, str]:
    """Sort key listing shards by number (shard-2 before shard-10); other ids after, by name.

    nginx resolves point collisions in favour of the server listed first, so the renderer and the
    ring must list servers in the same order. Purely computational, no side effects.
    """
    match = SHARD_ID.match(shard)
    return (int(match.group(1)), shard) if match else (1 << 62, shard)


def split_server(addr: str) -> tuple[bytes, bytes]:
    """Split a `server` string into (host, port) the way nginx does for ketama points.

    The port is the run of digits after the last ':'; without such a run the whole string is the
    host and the port is empty ("unix:" paths likewise). Purely computational, no side effects.
    """
    raw = addr.encode()
    if raw[:5].lower() == b"unix:":
        return raw[5:], b""
    head, sep, tail = raw.rpartition(b":")
    if sep and (not tail or tail.isdigit()):
        return head, tail
    return raw, b""


def server_points(addr: str) -> list[int]:
    """The 160 ring points of one weight-1 server, in the order nginx generates them.

    Purely computational, no side effects.
    """
    host, port = split_server(addr)
    # zlib continues a finished crc32 as if the inputs were concatenated, so the base can be
    # computed once and extended with each previous point, as nginx extends its running crc.
    base = zlib.crc32(host + b"\0" + port)
    points = []
    previous = 0
    for _ in range(POINTS_PER_WEIGHT):
        previous = zlib.crc32(previous.to_bytes(4, "little"), base)
        points.append(previous)
    return points


def key_hash(key: str) -> int:
    """The hash nginx looks up on the ring for `key`. Purely computational, no side effects."""
    return zlib.crc32(key.encode())


class Ring:
    """nginx's consistent-hash ring over (shard id, server address) members.

    Built once (about 0.1 s for 1,000 shards); `owner` is a crc32 and a bisect.
    """

    __slots__ = ("_hashes", "_owners", "fingerprint", "members")

    def __init__(self, members: Sequence[tuple[str, str]]) -> None:
        self.members: tuple[tuple[str, str], ...] = tuple(
            sorted(members, key=lambda m: shard_order(m[0]))
        )
        _check_unique(self.members)
        self.fingerprint: str = membership_fingerprint(self.members)
        self._hashes, self._owners = _build_points(self.members)

    def owner(self, session_id: str) -> str | None:
        """The shard nginx sends `session_id` to; None when the ring is empty."""
        if not self._hashes:
            return None
        return self._owners[self._index(session_id)]

    def walk(self, session_id: str) -> Iterator[str]:
        """Every member once, clockwise from the owner of `session_id` (bounded-load order)."""
        count = len(self._hashes)
        if count == 0:
            return
        start = self._index(session_id)
        seen: set[str] = set()
        for step in range(count):
            shard = self._owners[(start + step) % count]
            if shard not in seen:
                seen.add(shard)
                yield shard
                if len(seen) == len(self.members):
                    return

    def _index(self, session_id: str) -> int:
        # nginx: first point >= hash; past the last point wraps to the first (index % number).
        index = bisect_left(self._hashes, key_hash(session_id))
        return index if index < len(self._hashes) else 0

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(shard for shard, _ in self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and other.members == self.members

    def __hash__(self) -> int:
        return hash(self.members)

    def __repr__(self) -> str:
        return f"Ring({len(self.members)} members, fingerprint={self.fingerprint})"


@lru_cache(maxsize=16)
def ring_of(members: tuple[tuple[str, str], ...]) -> Ring:
    """A shared Ring per membership: building one for 1,000 shards takes a good part of a
    reconcile pass, and the membership rarely changes. Rings are immutable, so sharing is safe.
    Purely computational, no side effects.
    """
    return Ring(members)


def membership_fingerprint(members: Sequence[tuple[str, str]]) -> str:
    """Short stable hash of a ring membership (order-independent).

    Purely computational, no side effects.
    """
    lines = sorted(f"{shard} {addr}" for shard, addr in members)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _check_unique(members: Sequence[tuple[str, str]]) -> None:
    ids = [shard for shard, _ in members]
    addrs = [addr for _, addr in members]
    if len(set(ids)) != len(ids):
        raise ValueError(f"ring members repeat a shard id: {sorted(ids)}")
    if len(set(addrs)) != len(addrs):
        raise ValueError(f"ring members repeat an address: {sorted(addrs)}")


def _build_points(members: Sequence[tuple[str, str]]) -> tuple[list[int], list[str]]:
    # Sorting (hash, member index), packed into one int for speed, equals nginx's stable sort of
    # points generated in member order; of equal hashes the first is kept, as nginx's dedup does.
    shift = max(len(members), 1).bit_length()
    tagged = sorted(
        (point << shift) | index
        for index, (_, addr) in enumerate(members)
        for point in server_points(addr)
    )
    mask = (1 << shift) - 1
    hashes: list[int] = []
    owners: list[str] = []
    for packed in tagged:
        point = packed >> shift
        if hashes and hashes[-1] == point:
            continue
        hashes.append(point)
        owners.append(members[packed & mask][0])
    return hashes, owners
