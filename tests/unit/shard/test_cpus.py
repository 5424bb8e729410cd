"""The CPUs a shard counts on (RESTORE_CONCURRENCY's default): a container's CPU quota, read
from cgroup v2 or v1 files laid out as the kernel does."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard.settings import cgroup_cpus


def _v1(root: Path, quota: str, period: str = "100000") -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(
    ("line", "cpus"), [("150000 100000", 2), ("200000 100000", 2), ("50000 100000", 1)]
)
def test_a_v2_quota_rounds_up(tmp_path: Path, line: str, cpus: int) -> None:
    (tmp_path / "cpu.max").write_text(f"{line}\n")
    assert cgroup_cpus(tmp_path) == cpus


def test_v2_without_a_limit_and_no_cgroup_files_mean_none(tmp_path: Path) -> None:
    assert cgroup_cpus(tmp_path) == 0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) == 0


@pytest.mark.parametrize(("quota", "cpus"), [("250000", 3), ("-1", 0)])  # --cpus 2.5; none
def test_v1_quota_and_no_limit(tmp_path: Path, quota: str, cpus: int) -> None:
    assert cgroup_cpus(_v1(tmp_path, quota)) == cpus
