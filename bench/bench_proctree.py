"""The process-tree reader: psutil (what the contract uses) against reading /proc by hand (what it
did before), side by side in one run.

Both do the same two jobs the system needs: find every process carrying a marker in its
environment (the local runtime lists its shards this way on every reconcile pass) and sum the PSS
of a process tree (a shard without a cgroup limit measures itself this way).

    .venv/bin/python bench/bench_proctree.py [--processes 300] [--rounds 20]

Starts `--processes` short-lived `sleep` children (half of them marked), measures, and kills them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from chatscale_contract import proctree

MARKER = "CHATSCALE_BENCH"


def by_hand_scan(marker: str) -> dict[int, str | None]:
    """The previous reader: /proc/<pid>/stat and environ, parsed directly."""
    found: dict[int, str | None] = {}
    prefix = marker.encode() + b"="
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if stat[0] == "Z":
            continue
        value = next((e[len(prefix) :] for e in environ if e.startswith(prefix)), None)
        found[int(entry)] = value.decode() if value is not None else None
    return found


def by_hand_pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def timed(fn: Callable[[], object], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    children = [
        subprocess.Popen(["sleep", "600"], env={**os.environ, **({MARKER: "x"} if n % 2 else {})})
        for n in range(args.processes)
    ]
    try:
        total = len([e for e in os.listdir("/proc") if e.isdigit()])
        marked = {p.pid for p in proctree.scan(MARKER).values() if p.marker == "x"}
        assert marked == {pid for pid, v in by_hand_scan(MARKER).items() if v == "x"}
        pids = [c.pid for c in children]
        hand_scan = timed(lambda: by_hand_scan(MARKER), args.rounds)
        lib_scan = timed(lambda: proctree.scan(MARKER), args.rounds)
        me = os.getpid()
        hand_pss = timed(lambda: by_hand_pss([me, *pids]), args.rounds)
        lib_pss = timed(lambda: proctree.tree_pss(me), args.rounds)
    finally:
        for child in children:
            child.kill()
            child.wait()
    print(f"{total} processes on the machine, {len(marked)} marked; median of {args.rounds}")
    print("| job | by hand | psutil | psutil / by hand |")
    print("|---|---|---|---|")
    print(
        f"| find marked processes | {hand_scan:.1f} ms | {lib_scan:.1f} ms | "
        f"{lib_scan / hand_scan:.2f}x |"
    )
    print(
        f"| PSS of a tree of {len(pids) + 1} | {hand_pss:.1f} ms | {lib_pss:.1f} ms | "
        f"{lib_pss / hand_pss:.2f}x |"
    )


if __name__ == "__main__":
    main()
