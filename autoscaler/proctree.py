"""Finding a program's whole process tree by a marker in the environment (Linux /proc).

Chromium runs in a session of its own, daemonizes helpers, and its zygote, renderer and utility
processes overwrite their environment with their process title; so neither the process group,
the session, nor the environment alone finds them all. A marked process plus everything below it
in the tree does. Record the tree *before* killing (orphans are adopted by init and leave it), and
kill by (pid, start time) so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int
    """Start time in clock ticks since boot: (pid, start) names one process for its lifetime."""
    marker: str | None
    """Value of the marker variable asked for, if the process's environment has it."""


def scan(marker: str | None) -> dict[int, Proc]:
    """Every live (non-zombie) process, with the value of `marker` in its environment (environments
    are not read at all when `marker` is None)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            mark = _marker(int(entry), marker) if marker is not None else None
        except (OSError, IndexError):
            continue
        if stat[0] != "Z":
            found[int(entry)] = Proc(int(entry), int(stat[1]), int(stat[19]), mark)
    return found


def _marker(pid: int, name: str) -> str | None:
    prefix = name.encode() + b"="
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next((e[len(prefix) :] for e in environ if e.startswith(prefix)), None)
    return value.decode(errors="replace") if value is not None else None


def tree(procs: dict[int, Proc], marked: set[int]) -> list[Proc]:
    """The processes in `marked` and all their descendants. Purely computational."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    seen, todo = set(), list(marked)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in procs:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return [procs[pid] for pid in sorted(seen)]


def subtree(root: int) -> list[Proc]:
    """`root` and every process below it."""
    return tree(scan(None), {root})


def marked_tree(marker: str, value: str) -> list[Proc]:
    """Processes whose `marker` equals `value`, with their descendants."""
    procs = scan(marker)
    return tree(procs, {p.pid for p in procs.values() if p.marker == value})


def alive(recorded: list[Proc]) -> list[Proc]:
    """Those of `recorded` still running (same pid and the same start time)."""
    survivors = []
    for proc in recorded:
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] != "Z" and int(stat[19]) == proc.start:
                survivors.append(proc)
    return survivors


def kill(recorded: list[Proc]) -> int:
    """SIGKILL those of `recorded` still running; returns how many."""
    count = 0
    for proc in alive(recorded):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
            count += 1
    return count
