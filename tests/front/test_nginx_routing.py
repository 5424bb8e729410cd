"""Routing through a real nginx to real upstream servers: the Python ring agrees with nginx,
exceptions win over the ring, ids are read from path, header and query, errors are JSON."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
from support.frontkit import Front, Upstreams, routes, session_ids, shard_for

from autoscaler.front.table import RouteShard, RouteTable


async def test_nginx_agrees_with_ring_for_5000_ids(front: Front, upstreams: Upstreams) -> None:
    table = RouteTable(upstreams.shards(5))
    await front.serve(table)
    ring = table.ring()
    ids = session_ids(5000, seed=1)
    got = await routes(front, ids)
    wrong = {
        sid: (shard, ring.owner(sid)) for sid, shard in got.items() if shard != ring.owner(sid)
    }
    assert not wrong, (
        f"{len(wrong)} of {len(ids)} ids routed elsewhere, e.g. {list(wrong.items())[:5]}"
    )
    assert set(got.values()) == {f"shard-{n}" for n in range(1, 6)}


async def test_exceptions_reach_their_owner(front: Front, upstreams: Upstreams) -> None:
    shards = upstreams.shards(5)
    ring = RouteTable(shards).ring()
    # Names nginx's map would read as directives if they were not escaped.
    ids = [*session_ids(300, seed=2), "default", "include", "hostnames", "volatile"]
    others = {sid: next(s.id for s in shards if s.id != ring.owner(sid)) for sid in ids}
    await front.serve(RouteTable(shards, others))
    assert await routes(front, ids) == others
    # Ids without an exception still follow the ring.
    rest = session_ids(200, seed=3)
    assert await routes(front, rest) == {sid: ring.owner(sid) for sid in rest}


async def test_session_id_from_path_then_header_then_query(
    front: Front, upstreams: Upstreams
) -> None:
    shards = upstreams.shards(3)
    await front.serve(
        RouteTable(shards, {"alice": "shard-1", "bob": "shard-2", "carol": "shard-3"})
    )
    url = front.url
    async with aiohttp.ClientSession() as http:
        assert await shard_for(http, f"{url}/api/sessions/alice") == "shard-1"
        assert await shard_for(http, f"{url}/api/sessions/alice/messages?x=1") == "shard-1"
        headers = {"X-Session-Id": "bob"}
        assert await shard_for(http, f"{url}/api/sessions/alice", headers=headers) == "shard-1"
        assert await shard_for(http, f"{url}/api/messages", headers=headers) == "shard-2"
        query = {"session_id": "carol"}
        assert await shard_for(http, f"{url}/api/messages", headers, query) == "shard-2"
        assert await shard_for(http, f"{url}/api/messages", params=query) == "shard-3"


async def test_shard_sees_routing_headers(front: Front, upstreams: Upstreams) -> None:
    await front.serve(RouteTable(upstreams.shards(2)))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{front.url}/api/sessions/alice/qr") as resp:
            first = await resp.json()
        headers = {"X-Request-Id": "req-42", "X-Session-Id": "Alice"}
        async with http.post(f"{front.url}/api/sessions", headers=headers, data=b"{}") as resp:
            second = await resp.json()
    assert first["session_header"] == "alice"
    assert first["request_id"] and first["forwarded_for"] == "127.0.0.1"
    assert first["path"] == "/api/sessions/alice/qr"
    # A non-canonical id routes like no id; the shard still sees it, to explain what is wrong.
    assert second["session_header"] == "Alice"
    assert second["request_id"] == "req-42"
    assert second["method"] == "POST"


async def test_requests_without_id_reads_to_the_ring_writes_to_accepting_shards(
    front: Front, upstreams: Upstreams
) -> None:
    shards = (
        upstreams.shard("shard-1"),
        upstreams.shard("shard-2", accepting=False),
        upstreams.shard("shard-3", in_ring=False, accepting=True),
    )
    await front.serve(RouteTable(shards))
    async with aiohttp.ClientSession() as http:
        # A read (the fleet-wide list) needs no room: a full shard in the ring answers it too.
        read = {await shard_for(http, f"{front.url}/api/sessions") for _ in range(40)}
        written = set()
        for _ in range(40):  # a create in the older form (its id in the body): room needed
            async with http.post(f"{front.url}/api/sessions", data=b"{}") as resp:
                assert resp.status == 200
                written.add(resp.headers["X-Shard-Id"])
    assert read == {"shard-1", "shard-2"}
    assert written == {"shard-1", "shard-3"}


async def test_large_body_passes_through(front: Front, upstreams: Upstreams) -> None:
    # Bodies beyond nginx's memory buffer go through a temp file the workers must be able to use.
    await front.serve(RouteTable(upstreams.shards(1)))
    body = b"x" * (3 * 1024 * 1024)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{front.url}/api/sessions/alice/media", data=io.BytesIO(body)) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["body_bytes"] == len(body)


async def test_shard_errors_pass_through_untouched(front: Front, upstreams: Upstreams) -> None:
    await front.serve(RouteTable(upstreams.shards(1)))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{front.url}/__upstream/status/503") as resp,
    ):
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert await resp.json() == {"shard": "shard-1", "shard_error": 503}


async def test_nginx_errors_are_json(front: Front, upstreams: Upstreams, free_addr: str) -> None:
    await front.serve(RouteTable((RouteShard("shard-1", free_addr),)))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{front.url}/api/sessions/alice") as resp,
    ):
        assert resp.status == 502
        assert resp.content_type == "application/json"
        assert await resp.json() == {"error": "shard unreachable", "status": 502}
    status, body = await raw_request(front, "POST /api/sessions/alice HTTP/1.1", 10**9)
    assert status == 413
    assert "larger than" in json.loads(body)["error"]


async def test_no_shard_answers_503_json(front: Front, upstreams: Upstreams) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/api/sessions/alice", "/api/sessions", "/"):
            async with http.get(front.url + path) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "5"
                assert await resp.json() == {"error": "no shard is available", "status": 503}
        async with http.get(f"{front.url}/__chatscale/config") as resp:
            assert resp.status == 200
            assert (await resp.json())["shards"] == 0


async def test_draining_shards_still_reach_their_sessions(
    front: Front, upstreams: Upstreams
) -> None:
    # Nothing in the ring or accepting: only the exceptions route; everything else is 503.
    shards = (upstreams.shard("shard-1", in_ring=False, accepting=False),)
    await front.serve(RouteTable(shards, {"alice": "shard-1"}))
    async with aiohttp.ClientSession() as http:
        assert await shard_for(http, f"{front.url}/api/sessions/alice") == "shard-1"
        for path in ("/api/sessions/bob", "/api/sessions"):
            async with http.get(front.url + path) as resp:
                assert resp.status == 503


async def raw_request(front: Front, request_line: str, content_length: int) -> tuple[int, str]:
    """Send only headers announcing a body of `content_length`; return status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", front.settings.listen)
    headers = f"Host: x\r\nConnection: close\r\nContent-Length: {content_length}"
    writer.write(f"{request_line}\r\n{headers}\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    body = (await reader.readexactly(length)).decode()
    writer.close()  # without reading on: nginx waits for the unsent body before closing
    await writer.wait_closed()
    return int(head.split(" ", 2)[1]), body


async def test_a_stopped_shards_sessions_reach_its_backups(
    front: Front, upstreams: Upstreams, free_addr: str
) -> None:
    """A drained shard stopped before the next table reaches nginx: requests for the sessions
    it held go to another shard (which forwards them to the owner), not 502. POSTs too: nginx
    passes a request on only when the shard refused the connection, so nothing is sent twice."""
    live = upstreams.shards(3)
    gone = RouteShard("shard-4", free_addr, in_ring=False, accepting=False)
    await front.serve(RouteTable((*live, gone), {"alice": "shard-4", "bob": "shard-4"}))
    async with aiohttp.ClientSession() as http:
        for sid in ("alice", "bob"):
            for method in ("GET", "POST"):
                url = f"{front.url}/api/sessions/{sid}"
                async with http.request(method, url, data=b"{}") as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["X-Shard-Id"] in {s.id for s in live}
