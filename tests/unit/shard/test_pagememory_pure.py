"""The page-memory check without a browser: the figure, the setting, and which pages it reopens
(tests/shard/test_pagememory.py does it with real Chromium)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import shard.pagememory as pagememory
from shard.metrics import ShardMetrics
from shard.pagememory import MIB, PageMemoryGuard, page_bytes
from shard.sessions import SessionManager
from shard.settings import SettingsError, ShardSettings, from_env


def test_the_figure_counts_heap_blink_objects_and_array_buffers() -> None:
    usage = {
        "usedSize": 1,
        "totalSize": 1000,
        "embedderHeapUsedSize": 20,
        "backingStorageSize": 300,
    }
    assert page_bytes(usage) == 321, "totalSize is reserved, not used"
    assert page_bytes({"usedSize": 5}) == 5, "a figure an older Chromium lacks counts 0"


def test_the_limit_is_off_unless_set_and_never_negative() -> None:
    assert from_env({}).page_memory_limit_mb == 0
    settings = from_env({"PAGE_MEMORY_LIMIT_MB": "512", "PAGE_MEMORY_INTERVAL": "10"})
    assert (settings.page_memory_limit_mb, settings.page_memory_interval) == (512, 10.0)
    with pytest.raises(SettingsError, match="PAGE_MEMORY_LIMIT_MB"):
        from_env({"PAGE_MEMORY_LIMIT_MB": "-1"})


@dataclass
class FakePage:
    megabytes: int

    def is_closed(self) -> bool:
        return False


@dataclass
class FakeSession:
    id: str
    page: FakePage
    context: object = "context"


@dataclass
class FakeManager:
    """What the guard uses of a SessionManager."""

    sessions: dict[str, FakeSession]
    settings: ShardSettings = field(
        default_factory=lambda: ShardSettings("shard-1", page_memory_limit_mb=64)
    )
    metrics: ShardMetrics = field(default_factory=ShardMetrics)
    reopened: list[str] = field(default_factory=list)

    async def reopen(self, sid: str) -> None:
        self.reopened.append(sid)


async def test_only_pages_over_the_limit_are_reopened(monkeypatch: pytest.MonkeyPatch) -> None:
    async def measure(_context: Any, page: FakePage) -> int:
        if page.megabytes < 0:
            raise TimeoutError("page too busy to answer")
        return page.megabytes * MIB

    monkeypatch.setattr(pagememory, "page_memory", measure)
    pages = {"big": 65, "small": 63, "exact": 64, "busy": -1}
    manager = FakeManager({sid: FakeSession(sid, FakePage(mb)) for sid, mb in pages.items()})
    guard = PageMemoryGuard(cast(SessionManager, manager))
    assert await guard.check_once() == ["big"]
    assert manager.reopened == ["big"]
    counted = manager.metrics.registry.get_sample_value("chatscale_shard_page_memory_reopens_total")
    assert counted == 1
