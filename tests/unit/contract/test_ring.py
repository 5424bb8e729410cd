"""The Python ring: agrees with a literal transcription of nginx's algorithm, is deterministic,
spreads load, and moves only what consistent hashing must move.

tests/nginx/test_nginx_routing.py checks the same ring against a real nginx."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatscale_contract.ring import Ring, membership_fingerprint, shard_order, split_server

FIVE = [(f"shard-{n}", f"chatscale-shard-{n}:8000") for n in range(1, 6)]


def reference_points(members: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """nginx's ngx_http_upstream_init_chash written out plainly: sorted, deduplicated points."""
    points: list[tuple[int, str]] = []
    for shard, server in members:  # in upstream order
        host, port = server.encode(), b""
        for j in range(len(server)):  # from the end: digits, then ':' means a port
            c = server[len(server) - j - 1]
            if c == ":":
                host, port = (
                    server[: len(server) - j - 1].encode(),
                    server[len(server) - j :].encode(),
                )
                break
            if not "0" <= c <= "9":
                break
        previous = 0
        for _ in range(160):
            previous = zlib.crc32(host + b"\0" + port + struct.pack("<I", previous))
            points.append((previous, shard))
    points.sort(key=lambda p: p[0])  # stable, like glibc's qsort (a merge sort)
    unique: list[tuple[int, str]] = []
    for point in points:
        if not unique or unique[-1][0] != point[0]:
            unique.append(point)
    return unique


def reference_owner(points: list[tuple[int, str]], key: str) -> str | None:
    """nginx's find_chash_point + get_chash_peer: first point >= crc32(key), wrapping around."""
    wanted = zlib.crc32(key.encode())
    for value, shard in points:
        if value >= wanted:
            return shard
    return points[0][1] if points else None


memberships = st.lists(
    st.tuples(st.integers(1, 300), st.integers(1, 65535)), max_size=12, unique_by=lambda m: m[0]
).map(lambda pairs: [(f"shard-{n}", f"10.0.{n % 7}.{n}:{port}") for n, port in pairs])
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(memberships, st.lists(keys, min_size=1, max_size=30))
def test_matches_reference_transcription_of_nginx(
    members: list[tuple[str, str]], ids: list[str]
) -> None:
    ring = Ring(members)
    points = reference_points(sorted(members, key=lambda m: shard_order(m[0])))
    for sid in ids:
        assert ring.owner(sid) == reference_owner(points, sid)


def test_known_owners_do_not_drift() -> None:
    # Pinned values: a change here means shards and nginx would disagree after an upgrade.
    ring = Ring(FIVE)
    assert ring.owner("alice") == "shard-5"
    assert ring.owner("bob") == "shard-1"
    assert ring.owner("0") == "shard-2"
    assert ring.owner("3f2a9c1e-7b7d-4e0f-9a55-1c2d3e4f5a6b") == "shard-3"
    assert list(ring.walk("bob")) == ["shard-1", "shard-5", "shard-3", "shard-2", "shard-4"]
    local = Ring([(f"shard-{n}", f"127.0.0.1:{8100 + n}") for n in range(1, 4)])
    assert (local.owner("alice"), local.owner("bob")) == ("shard-3", "shard-2")


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [
        ("chatscale-shard-3:8000", b"chatscale-shard-3", b"8000"),
        ("127.0.0.1:8103", b"127.0.0.1", b"8103"),
        ("[::1]:80", b"[::1]", b"80"),
        ("[::1]", b"[::1]", b""),
        ("host", b"host", b""),
        ("host:", b"host", b""),
        ("a:b1", b"a:b1", b""),
        ("unix:/run/x.sock", b"/run/x.sock", b""),
    ],
)
def test_split_server_like_nginx(addr: str, host: bytes, port: bytes) -> None:
    assert split_server(addr) == (host, port)


def test_empty_ring_has_no_owner() -> None:
    ring = Ring([])
    assert ring.owner("alice") is None
    assert list(ring.walk("alice")) == []
    assert not ring.members and len(ring) == 0


def test_deterministic_and_order_independent() -> None:
    forward, backward = Ring(FIVE), Ring(list(reversed(FIVE)))
    assert forward == backward
    assert forward.fingerprint == backward.fingerprint == membership_fingerprint(FIVE)
    assert forward.members == tuple(FIVE)
    ids = [f"s{i}" for i in range(2000)]
    assert [forward.owner(i) for i in ids] == [backward.owner(i) for i in ids]


def test_fingerprint_tracks_membership() -> None:
    moved = [*FIVE[:4], ("shard-5", "chatscale-shard-5:8001")]
    assert Ring(FIVE).fingerprint != Ring(moved).fingerprint
    assert Ring(FIVE).fingerprint != Ring(FIVE[:4]).fingerprint


def test_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="shard id"):
        Ring([("shard-1", "a:1"), ("shard-1", "b:1")])
    with pytest.raises(ValueError, match="address"):
        Ring([("shard-1", "a:1"), ("shard-2", "a:1")])


def test_load_spreads_evenly() -> None:
    ring = Ring(FIVE)
    counts = Counter(ring.owner(f"session-{i}") for i in range(20_000))
    assert set(counts) == {shard for shard, _ in FIVE}
    for shard, count in counts.items():
        assert 0.7 * 4000 < count < 1.3 * 4000, (shard, counts)


@settings(max_examples=40, deadline=None)
@given(memberships.filter(lambda m: len(m) >= 2), st.lists(keys, min_size=1, max_size=40))
def test_walk_visits_every_member_once_starting_at_owner(
    members: list[tuple[str, str]], ids: list[str]
) -> None:
    ring = Ring(members)
    for sid in ids:
        order = list(ring.walk(sid))
        assert order[0] == ring.owner(sid)
        assert sorted(order) == sorted(shard for shard, _ in members)


@settings(max_examples=40, deadline=None)
@given(memberships.filter(lambda m: len(m) >= 2), st.lists(keys, min_size=1, max_size=60))
def test_only_the_joining_shard_takes_sessions(
    members: list[tuple[str, str]], ids: list[str]
) -> None:
    joined, *others = members
    before, after = Ring(others), Ring(members)
    # Read backwards, the same check shows that a leaving shard only gives away its own sessions.
    for sid in ids:
        assert after.owner(sid) in (before.owner(sid), joined[0])
