"""Which session id a request is routed by: the activator must read it exactly as nginx does."""

from __future__ import annotations

import pytest

from chatscale_contract.hops import FORWARDED_BY, passed_headers, routed_session_id


@pytest.mark.parametrize(
    ("path", "headers", "query", "expected"),
    [
        ("/api/sessions/alice", {}, {}, "alice"),
        ("/api/sessions/alice/qr", {"X-Session-Id": "bob"}, {}, "alice"),
        ("/api/sessions/alice/", {}, {}, "alice"),
        ("/api/sessions", {"X-Session-Id": "bob"}, {"session_id": "carol"}, "bob"),
        ("/api/sessions", {}, {"session_id": "carol"}, "carol"),
        ("/api/sessions", {"X-Session-Id": "Bob"}, {"session_id": "carol"}, "carol"),
        ("/api/sessions/Alice", {}, {}, ""),  # not canonical: routed as having none
        ("/api/sessions/alice.x", {}, {}, ""),
        ("/api/sessions/alice\n", {}, {}, ""),
        ("/api/sessionsx/alice", {}, {}, ""),
        ("/other/api/sessions/alice", {}, {}, ""),
        ("/api/sessions", {"X-Session-Id": "a" * 65}, {}, ""),
        ("/api/sessions", {"X-Session-Id": "bob\n"}, {}, ""),
        ("/", {}, {}, ""),
    ],
)
def test_routed_session_id(
    path: str, headers: dict[str, str], query: dict[str, str], expected: str
) -> None:
    assert routed_session_id(path, headers, query) == expected


def test_passed_headers_drop_hop_by_hop_and_mark_the_hop() -> None:
    given = {"Host": "x", "Connection": "keep-alive", "X-Api-Key": "k", "Content-Length": "3"}
    assert passed_headers(given, "shard-2") == {"X-Api-Key": "k", FORWARDED_BY: "shard-2"}
