"""Benchmark the pure engine: one `decide` call and a 24-hour `simulate` replay.

Run:  .venv/bin/python bench/bench_engine.py
Prints a markdown table for docs/benchmarks.md. Targets (issue 2): decide with 1,000 shards and
50,000 sessions under 5 ms; simulate over a 24-hour trace at 1 s ticks under 10 s.
"""

from __future__ import annotations

import math
import platform
import statistics
import time

from autoscaler.engine.decide import decide
from autoscaler.engine.model import History, Observed, ShardState, ShardView
from autoscaler.engine.simulate import TracePoint, run
from chatscale_contract.config import Config

GB = 1024**3


def fleet(shards: int, sessions: int) -> Observed:
    per = sessions // shards
    views = tuple(
        ShardView(
            f"shard-{n}", ShardState.READY, per, memory_bytes=int(per * 0.1 * GB), heartbeat_age=1.0
        )
        for n in range(1, shards + 1)
    )
    return Observed(views, max_sessions=50, memory_limit_bytes=10 * GB)


def time_decide(shards: int, sessions: int, repeats: int = 300) -> list[float]:
    config = Config.model_validate({"policy": {"max_shards": 2000}})
    observed = fleet(shards, sessions)
    now = 1_000_000.0
    history = History(now - 10_000)
    for t in range(0, 300, 2):  # a full scale-down window of history, as the daemon keeps
        history = history.record(now - 300 + t, shards, 600, busy=True)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        decide(observed, config.policy, history, now)
        samples.append(time.perf_counter() - start)
    return samples


def daily_trace() -> list[TracePoint]:
    return [
        TracePoint(float(t), int(2500 - 2000 * math.cos(2 * math.pi * t / 86400)))
        for t in range(0, 86401, 60)
    ]


def time_simulate() -> tuple[float, dict[str, object]]:
    config = Config.model_validate({"policy": {"max_shards": 200}})
    start = time.perf_counter()
    records = list(run(config, daily_trace(), tick=1.0, start_delay=30.0, drain_seconds=10.0))
    return time.perf_counter() - start, records[-1]


def main() -> None:
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    print("| case | p50 | p99 | target |")
    print("|---|---|---|---|")
    for shards, sessions in ((100, 5_000), (1_000, 50_000)):
        samples = sorted(time_decide(shards, sessions))
        p50 = statistics.median(samples) * 1000
        p99 = samples[int(len(samples) * 0.99) - 1] * 1000
        target = "< 5 ms" if shards == 1000 else ""
        case = f"decide, {shards} shards, {sessions} sessions"
        print(f"| {case} | {p50:.2f} ms | {p99:.2f} ms | {target} |")
    elapsed, summary = time_simulate()
    print(f"| simulate 24 h trace at 1 s ticks (86,401 passes) | {elapsed:.2f} s | | < 10 s |")
    print(f"\nsimulate summary: {summary}")


if __name__ == "__main__":
    main()
