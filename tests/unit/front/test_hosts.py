"""The block of shard addresses a front agent keeps in a hosts file (pure)."""

from __future__ import annotations

from autoscaler.front.agent import HOSTS_BEGIN, HOSTS_END, hosts_text

DOCKER = "127.0.0.1\tlocalhost\n10.0.1.4\tf00d1234\n"


def test_the_block_is_added_once_and_replaced_in_place() -> None:
    first = hosts_text(DOCKER, {"demo-shard-2": "10.0.1.8", "demo-shard-1": "10.0.1.7"})
    assert first == (
        f"{DOCKER}{HOSTS_BEGIN}\n10.0.1.7 demo-shard-1\n10.0.1.8 demo-shard-2\n{HOSTS_END}\n"
    )
    moved = hosts_text(first, {"demo-shard-1": "10.0.1.9"})
    assert moved == f"{DOCKER}{HOSTS_BEGIN}\n10.0.1.9 demo-shard-1\n{HOSTS_END}\n"
    assert hosts_text(moved, {}) == f"{DOCKER}{HOSTS_BEGIN}\n{HOSTS_END}\n"


def test_lines_after_the_block_are_kept() -> None:
    current = f"{DOCKER}{HOSTS_BEGIN}\n1.2.3.4 old\n{HOSTS_END}\n10.0.0.1 added-later\n"
    assert hosts_text(current, {"x": "10.0.0.2"}).startswith(
        f"{DOCKER}10.0.0.1 added-later\n{HOSTS_BEGIN}\n10.0.0.2 x\n"
    )
