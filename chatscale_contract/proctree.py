"""Finding a program's whole process tree by a marker in the environment, and measuring it.

This is the contract's one piece of process I/O (through psutil): the local runtime finds and
stops shard processes with it, and a shard finds and measures its own browser.

Chromium runs in a session of its own, daemonizes helpers, and its zygote, renderer and utility
processes overwrite their environment with their process title; so neither the process group,
the session, nor the environment alone finds them all. A marked process plus everything below it
in the tree does. Record the tree *before* killing (orphans are adopted by init and leave it), and
kill by (pid, start time) so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: float
    """Creation time (epoch seconds): (pid, start) names one process for its lifetime."""
    marker: str | None
    """Value of the marker variable asked for, if the process's environment has it."""


def scan(marker: str | None) -> dict[int, Proc]:
    """Every live (non-zombie) process, with the value of `marker` in its environment
    (environments are not read at all when `marker` is None)."""
    found = {}
    for proc in psutil.process_iter(["ppid", "create_time", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["create_time"] is None:
            continue
        mark = None
        if marker is not None:
            with contextlib.suppress(psutil.Error):
                mark = proc.environ().get(marker)
        found[proc.pid] = Proc(proc.pid, info["ppid"] or 0, info["create_time"], mark)
    return found


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


def marked_tree(marker: str, value: str) -> list[Proc]:
    """Processes whose `marker` equals `value`, with their descendants."""
    procs = scan(marker)
    return tree(procs, {p.pid for p in procs.values() if p.marker == value})


def _same(proc: Proc) -> psutil.Process | None:
    """The live process `proc` names, or None if it exited (or its pid now names another)."""
    try:
        live = psutil.Process(proc.pid)
        if live.create_time() != proc.start or live.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return live


def alive(recorded: list[Proc]) -> list[Proc]:
    """Those of `recorded` still running (same pid and the same start time)."""
    return [proc for proc in recorded if _same(proc) is not None]


def kill(recorded: list[Proc]) -> int:
    """SIGKILL those of `recorded` still running; returns how many."""
    count = 0
    for proc in recorded:
        live = _same(proc)
        if live is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                live.kill()
                count += 1
    return count


def tree_pss(root: int) -> int:
    """Proportional set size of `root` and all its descendants, in bytes (0 if `root` is gone).

    PSS shares each page among the processes mapping it, so Chromium's shared code is counted
    once for the whole tree rather than once per process (as RSS would).
    """
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total
