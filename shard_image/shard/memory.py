"""How much memory this shard uses: the container's cgroup figure, else the process tree's PSS.

In a container with a memory limit the cgroup figure is what the kernel enforces, so it is what
the watermark must compare against. Without a limit (local processes) the cgroup is the whole
host's, so the shard's own process tree is measured instead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from chatscale_contract import proctree

_V2 = Path("/sys/fs/cgroup")
_V1 = Path("/sys/fs/cgroup/memory")
# cgroup v1 reports "no limit" as a huge number near 2**63.
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class MemoryUse:
    used_bytes: int
    limit_bytes: int
    """0 when no limit applies."""
    source: str


def measure() -> MemoryUse:
    limit, used = _cgroup()
    if 0 < limit < _NO_LIMIT:
        return MemoryUse(used, limit, "cgroup")
    return MemoryUse(proctree.tree_pss(os.getpid()), 0, "process tree")


def _cgroup() -> tuple[int, int]:
    """(limit, usage net of page cache); (0, 0) when unreadable."""
    with contextlib.suppress(OSError, ValueError):
        raw = (_V2 / "memory.max").read_text().strip()
        limit = 0 if raw == "max" else int(raw)
        used = int((_V2 / "memory.current").read_text())
        return limit, used - _stat(_V2 / "memory.stat", "inactive_file")
    with contextlib.suppress(OSError, ValueError):
        limit = int((_V1 / "memory.limit_in_bytes").read_text())
        used = int((_V1 / "memory.usage_in_bytes").read_text())
        return limit, used - _stat(_V1 / "memory.stat", "total_inactive_file")
    return 0, 0


def _stat(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            return int(parts[1])
    return 0
