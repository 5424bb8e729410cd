"""The status page's charts: the last hour of samples as inline SVG (no script, no external
asset), and the decisions table with identical consecutive rows folded into one.

Purely computational, no side effects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from autoscaler.loop.samples import KEEP, Sample

WIDTH, HEIGHT = 520, 150
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 22
"""Margins inside the SVG: y labels on the left, time labels below."""


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    value: Callable[[Sample], float]


def charts(samples: Sequence[Sample], now: float) -> list[Markup]:
    """Sessions against capacity, shards, and memory against the limits."""
    gib = 2**30
    return [
        chart(
            "Sessions",
            samples,
            now,
            [
                Series("sessions", "#1565c0", lambda s: s.sessions),
                Series("capacity", "#9e9e9e", lambda s: s.capacity),
                Series("waiting", "#c62828", lambda s: s.waiting),
            ],
        ),
        chart("Shards", samples, now, [Series("shards", "#2e7d32", lambda s: s.shards)]),
        chart(
            "Memory (GiB)",
            samples,
            now,
            [
                Series("used", "#6a1b9a", lambda s: s.memory_bytes / gib),
                Series("limit", "#9e9e9e", lambda s: s.memory_limit_bytes / gib),
            ],
        ),
    ]


def chart(title: str, samples: Sequence[Sample], now: float, series: list[Series]) -> Markup:
    """One chart: a line per series over the last hour, its scale from 0 to the largest value."""
    top = max([1.0, *(s.value(x) for s in series for x in samples)]) * 1.1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def point(sample: Sample, value: float) -> str:
        x = LEFT + plot_w * (1 - min(KEEP, max(0.0, now - sample.ts)) / KEEP)
        y = TOP + plot_h * (1 - value / top)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}, last hour">',
        f"<title>{escape(title)}, last hour</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
        _label(LEFT - 4, TOP + 8, "end", _number(top / 1.1)),
        _label(LEFT - 4, TOP + plot_h, "end", "0"),
        _label(LEFT, HEIGHT - 6, "start", "-60 min"),
        _label(LEFT + plot_w / 2, HEIGHT - 6, "middle", "-30 min"),
        _label(WIDTH - RIGHT, HEIGHT - 6, "end", "now"),
    ]
    for s in series:
        points = " ".join(point(x, s.value(x)) for x in samples)
        parts.append(
            f'<polyline data-series="{escape(s.name)}" data-points="{len(samples)}" '
            f'points="{points}" fill="none" stroke="{s.color}" stroke-width="2"/>'
        )
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="key" style="color:{s.color}">&#9644; {escape(s.name)} '
        f"{_number(s.value(samples[-1])) if samples else '-'}</span>"
        for s in series
    )
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)} {legend}</figcaption>'
        f"{''.join(parts)}</figure>"
    )


def _label(x: float, y: float, anchor: str, text: str) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def _number(value: float) -> str:
    return f"{value:.1f}" if value and abs(value) < 10 and value != int(value) else f"{value:.0f}"


_SAME = ("leader", "desired", "current", "recommendation", "held", "actions", "reasons", "outcomes")


def folded(decisions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`decisions` (newest first) with each run of identical consecutive rows as one row: the
    newest of the run, with `count` and `since` (the oldest one's time)."""
    rows: list[dict[str, Any]] = []
    for decision in decisions:
        last = rows[-1] if rows else None
        if last is not None and all(last[k] == decision[k] for k in _SAME):
            last["count"] += 1
            last["since"] = decision["ts"]
        else:
            rows.append({**decision, "count": 1, "since": decision["ts"]})
    return rows
