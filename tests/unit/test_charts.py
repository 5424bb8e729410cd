"""The status page's last hour: sampling, the SVG charts and folded decisions (pure)."""

from __future__ import annotations

import re

from autoscaler.engine.model import Observed, ShardState, ShardView
from autoscaler.loop.samples import KEEP, SAMPLE_EVERY, Samples
from autoscaler.web.charts import HEIGHT, LEFT, RIGHT, TOP, WIDTH, Series, chart, charts, folded


def observed(sessions: int, fresh: bool = True) -> Observed:
    shards = (
        ShardView("shard-1", ShardState.READY, sessions, 300 * 2**20),
        ShardView("shard-2", ShardState.DEAD, 0, 0),
    )
    return Observed(shards, max_sessions=50, memory_limit_bytes=2**30, fresh=fresh, pending=2)


def test_one_sample_per_interval_an_hour_kept_and_stale_passes_skipped() -> None:
    samples = Samples()
    assert samples.add(1000.0, observed(3))
    assert not samples.add(1000.0 + SAMPLE_EVERY / 2, observed(4)), "too soon"
    assert not samples.add(1000.0 + SAMPLE_EVERY, observed(5, fresh=False)), "stale: a gap"
    assert samples.add(1000.0 + SAMPLE_EVERY, observed(6))
    first = next(iter(samples))
    assert (first.sessions, first.capacity, first.shards, first.waiting) == (3, 50, 1, 2)
    assert (first.memory_bytes, first.memory_limit_bytes) == (300 * 2**20, 2**30)
    for n in range(2, 400):
        samples.add(1000.0 + n * SAMPLE_EVERY, observed(n))
    kept = list(samples)
    assert kept[-1].ts - kept[0].ts <= KEEP and len(kept) == KEEP / SAMPLE_EVERY + 1


def points(svg: str, series: str) -> list[tuple[float, float]]:
    found = re.search(rf'data-series="{series}" data-points="\d+" points="([^"]*)"', svg)
    assert found, svg
    return [(float(x), float(y)) for x, y in (p.split(",") for p in found.group(1).split())]


def test_the_newest_sample_is_at_the_right_edge_and_the_largest_near_the_top() -> None:
    samples = Samples()
    for n, sessions in enumerate([0, 10, 40, 20]):
        samples.add(n * 600.0, observed(sessions))
    now = 3 * 600.0
    svg = str(chart("Sessions", list(samples), now, [Series("s", "#000", lambda x: x.sessions)]))
    line = points(svg, "s")
    assert line[-1][0] == WIDTH - RIGHT and line[0][0] == LEFT + (WIDTH - LEFT - RIGHT) / 2
    bottom = HEIGHT - 22
    assert line[0][1] == bottom, "0 sits on the axis"
    assert TOP < line[2][1] < TOP + 15, "the largest value is near the top (10% headroom)"
    assert "<script" not in svg and "http" not in svg.replace("http://www.w3.org", "")


def test_three_charts_and_their_legends_name_the_latest_values() -> None:
    samples = Samples()
    samples.add(0.0, observed(7))
    rendered = [str(c) for c in charts(list(samples), 5.0)]
    assert len(rendered) == 3
    assert "sessions 7" in rendered[0] and "capacity 50" in rendered[0]
    assert "shards 1" in rendered[1] and "used 0.3" in rendered[2] and "limit 1" in rendered[2]
    empty = [str(c) for c in charts([], 5.0)]
    assert all('data-points="0"' in c for c in empty)


def test_identical_consecutive_decisions_fold_into_one_row_with_a_count() -> None:
    def decision(ts: float, desired: int, actions: list[str]) -> dict[str, object]:
        return {
            "ts": ts, "leader": True, "desired": desired, "current": 2, "recommendation": desired,
            "held": False, "actions": actions, "reasons": ["steady"], "outcomes": [],
            "duration_ms": ts,
        }  # fmt: skip

    newest_first = [
        decision(50, 2, []),
        decision(40, 2, []),
        decision(30, 2, []),
        decision(20, 3, ["start shard-3"]),
        decision(10, 2, []),
    ]
    rows = folded(newest_first)
    assert [(r["ts"], r["count"], r["since"]) for r in rows] == [
        (50, 3, 30),
        (20, 1, 20),
        (10, 1, 10),
    ]
    assert newest_first[0].get("count") is None, "the input is not changed"
