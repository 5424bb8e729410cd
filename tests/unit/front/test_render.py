"""Rendering nginx.conf (pure): byte-stable, every map value names a defined upstream, no empty
upstream block, unsafe values refused.

Whether nginx accepts and routes by these files is checked against a real nginx in tests/nginx/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoscaler.front.render import RenderError, backups, check_addr, map_hash_sizes, render
from autoscaler.front.table import RouteShard, RouteTable
from chatscale_contract.config import NginxSettings

TEMPLATES = Path(__file__).resolve().parents[3] / "nginx_templates"
SETTINGS = NginxSettings()
SHARDS = (
    RouteShard("shard-10", "chatscale-shard-10:8000"),
    RouteShard("shard-2", "chatscale-shard-2:8000", accepting=False),
    RouteShard("shard-1", "chatscale-shard-1:8000", in_ring=False),
)
EXCEPTIONS = {"zed": "shard-2", "alice": "shard-1", "default": "shard-10", "include": "shard-1"}


def text_of(table: RouteTable, settings: NginxSettings = SETTINGS) -> str:
    return render(table, settings, TEMPLATES)


def block(text: str, header: str) -> str:
    """The body of the block that starts with `header {`."""
    start = text.index(header + " {")
    return text[start : text.index("\n    }", start)]


def test_same_table_renders_same_bytes_whatever_the_order() -> None:
    one = RouteTable(SHARDS, EXCEPTIONS)
    other = RouteTable(tuple(reversed(SHARDS)), dict(reversed(list(EXCEPTIONS.items()))))
    assert text_of(one) == text_of(other) == text_of(one)
    assert one.version == other.version


def test_version_follows_content() -> None:
    base = RouteTable(SHARDS, EXCEPTIONS)
    assert base.version != RouteTable(SHARDS, {**EXCEPTIONS, "bob": "shard-1"}).version
    assert base.version != RouteTable(SHARDS[:2], EXCEPTIONS).version
    drained = (RouteShard("shard-10", "chatscale-shard-10:8000", accepting=False), *SHARDS[1:])
    assert base.version != RouteTable(drained, EXCEPTIONS).version
    assert f'"version":"{base.version}"' in text_of(base)


def test_shards_listed_by_number_and_pools_by_flags() -> None:
    text = text_of(RouteTable(SHARDS, EXCEPTIONS))
    upstreams = re.findall(r"upstream (shard_\d+) \{", text)
    assert upstreams == ["shard_1", "shard_2", "shard_10"]
    ring = block(text, "upstream chatscale_ring")
    assert "hash $chatscale_route_id consistent;" in ring
    assert re.findall(r"server (\S+);", ring) == [
        "chatscale-shard-2:8000",
        "chatscale-shard-10:8000",
    ]
    pool = block(text, "upstream chatscale_any")
    assert "least_conn;" in pool
    assert re.findall(r"server (\S+);", pool) == [
        "chatscale-shard-1:8000",
        "chatscale-shard-10:8000",
    ]


def test_map_entries_sorted_quoted_and_escaped() -> None:
    routing = block(text_of(RouteTable(SHARDS, EXCEPTIONS)), "map $session_id $shard_upstream")
    entries = re.findall(r'^ +"(.*)" (\S+);$', routing, re.MULTILINE)
    # "default" and "include" would be read as map directives without the backslash.
    assert entries == [
        ("", "$chatscale_no_id"),  # by method: reads to any shard in the ring, the rest below
        ("alice", "shard_1"),
        ("\\default", "shard_10"),
        ("\\include", "shard_1"),
        ("zed", "shard_2"),
    ]
    assert "default chatscale_ring;" in routing
    no_id = block(text_of(RouteTable(SHARDS, EXCEPTIONS)), "map $request_method $chatscale_no_id")
    assert re.findall(r"^ +(\S+) (\S+);$", no_id, re.MULTILINE) == [
        ("GET", "chatscale_read"),
        ("HEAD", "chatscale_read"),
        ("default", "chatscale_any"),
    ]


def routing_values(text: str) -> set[str]:
    """Every upstream name (or "unavailable") the two routing maps can pick."""
    values: set[str] = set()
    for head in ("map $session_id $shard_upstream", "map $request_method $chatscale_no_id"):
        values |= set(re.findall(r" (\S+);$", block(text, head), re.MULTILINE))
    return values - {"$chatscale_no_id"}


@pytest.mark.parametrize(
    "shards",
    [
        (),
        (RouteShard("shard-1", "a:1", in_ring=False, accepting=False),),
        (RouteShard("shard-1", "a:1", accepting=False), RouteShard("shard-2", "b:1", False)),
    ],
)
def test_every_map_value_is_an_upstream_or_answered_503(shards: tuple[RouteShard, ...]) -> None:
    exceptions = {"alice": shards[0].id} if shards else {}
    text = text_of(RouteTable(shards, exceptions))
    defined = set(re.findall(r"^    upstream (\S+) \{", text, re.MULTILINE))
    assert routing_values(text) <= defined | {"unavailable"}
    assert "if ($shard_upstream = unavailable) {" in text
    # An upstream block without a server is a config error; none is ever rendered.
    for name in defined:
        assert "server " in block(text, f"upstream {name}")


@pytest.mark.parametrize(
    "shards",
    [
        (),
        (RouteShard("shard-1", "a:1", in_ring=False, accepting=False),),
        (RouteShard("shard-1", "a:1", accepting=False),),
    ],
)
def test_what_no_shard_takes_goes_to_the_activators(shards: tuple[RouteShard, ...]) -> None:
    table = RouteTable(shards, activators=("10.0.0.5:8081", "10.0.0.6:8081"))
    text = text_of(table)
    values = routing_values(text)
    # In every case some request has no shard (no ring, or no accepting shard for id-less ones).
    assert "unavailable" not in values
    assert "chatscale_activator" in values
    servers = block(text, "upstream chatscale_activator")
    assert "server 10.0.0.5:8081 max_fails=1 fail_timeout=5s;" in servers
    assert "server 10.0.0.6:8081" in servers
    # No activator answering: nginx still says 503 with Retry-After, not 502.
    fallback = block(text, "location @chatscale_502")
    assert "if ($shard_upstream = chatscale_activator)" in fallback
    assert "add_header Retry-After 5 always;" in fallback and "return 503" in fallback


def test_activators_change_the_version_and_are_checked() -> None:
    plain = RouteTable(SHARDS)
    held = RouteTable(SHARDS, activators=("10.0.0.5:8081",))
    assert plain.version != held.version
    assert "chatscale_activator" not in text_of(plain)
    with pytest.raises(RenderError, match="activator addr"):
        text_of(RouteTable(SHARDS, activators=("10.0.0.5:8081; include x",)))


def test_settings_reach_the_config() -> None:
    settings = NginxSettings(
        worker_processes=3,
        listen=8080,
        client_max_body_size="2m",
        connect_timeout=1.5,
        upstream_keepalive=0,
        access_log="off",
    )
    text = text_of(RouteTable(SHARDS), settings)
    assert "worker_processes 3;" in text and "listen 8080 default_server;" in text
    assert "client_max_body_size 2097152;" in text
    assert "proxy_connect_timeout 1500ms;" in text
    assert "keepalive " not in text.replace("keepalive_timeout", "")
    assert "access_log off;" in text
    assert "worker_processes auto;" in text_of(RouteTable(SHARDS))
    assert f'pid "{SETTINGS.pid_path}";' in text


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (RouteTable((RouteShard("shard-1", "a:1; include /etc/passwd"),)), "is not a number"),
        (RouteTable((RouteShard("shard-1", "a b:80"),)), "host 'a b'"),
        (RouteTable((RouteShard("shard-1", "8000"),)), "not host:port"),
        (RouteTable((RouteShard("shard-1", "unix:/x.sock"),)), "not a number"),
        (RouteTable((RouteShard("shard-1", "a:0"),)), "1 to 65535"),
        (RouteTable((RouteShard("shard-1", "a:65536"),)), "1 to 65535"),
        (RouteTable((RouteShard("worker-1", "a:80"),)), "not a shard id"),
        (RouteTable((RouteShard("shard-1", "a:80"), RouteShard("shard-1", "b:80"))), "shard id"),
        (RouteTable((RouteShard("shard-1", "a:80"), RouteShard("shard-2", "a:80"))), "address"),
        (RouteTable(SHARDS, {"Alice": "shard-1"}), "lowercase; use 'alice'"),
        (RouteTable(SHARDS, {"alice\n": "shard-1"}), "1-64 characters"),
        (RouteTable(SHARDS, {'a"; x': "shard-1"}), "1-64 characters"),
        (RouteTable(SHARDS, {"a" * 65: "shard-1"}), "longer than 64"),
        (RouteTable(SHARDS, {"alice": "shard-7"}), "'shard-7' is not a rendered shard"),
    ],
)
def test_unsafe_values_are_refused(table: RouteTable, message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        text_of(table)


@pytest.mark.parametrize("path", ["/var/log/my log", '/x";', "/x$y", "/x{"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(RenderError, match="access_log"):
        text_of(RouteTable(SHARDS), NginxSettings(access_log=path))


def test_many_problems_are_summarised() -> None:
    table = RouteTable(SHARDS, {f"Bad{i}": "shard-1" for i in range(25)})
    with pytest.raises(RenderError) as info:
        text_of(table)
    assert "25 problem(s)" in str(info.value) and "... and 15 more" in str(info.value)


@pytest.mark.parametrize(
    ("addr", "ok"),
    [
        ("chatscale-shard-3:8000", True),
        ("127.0.0.1:8103", True),
        ("[::1]:8000", True),
        ("localhost:1", True),
        ("-bad:80", False),
        ("host:08", False),
        ("host:80x", False),
        (":80", False),
    ],
)
def test_check_addr(addr: str, ok: bool) -> None:
    assert (check_addr(addr) is None) == ok


def test_map_hash_sizes_grow_with_exceptions() -> None:
    assert map_hash_sizes(0) == (16384, 512)
    assert map_hash_sizes(100_000) == (400_000, 512)
    text = text_of(RouteTable(SHARDS, EXCEPTIONS))
    assert text.index("map_hash_max_size") < text.index("map $")


def test_each_shard_is_backed_by_the_next_ring_members_after_it() -> None:
    shards = [
        RouteShard("shard-1", "a:1"),
        RouteShard("shard-2", "b:1", in_ring=False),  # draining: backed, but backs no one
        RouteShard("shard-3", "c:1"),
        RouteShard("shard-4", "d:1"),
    ]
    ring = [s.addr for s in shards if s.in_ring]
    assert backups(shards, ring) == {
        "shard-1": ["c:1", "d:1"],
        "shard-2": ["c:1", "d:1"],
        "shard-3": ["d:1", "a:1"],  # wraps around
        "shard-4": ["a:1", "c:1"],
    }
    assert backups(shards[:1], ring[:1]) == {"shard-1": []}, "a lone shard has none"
