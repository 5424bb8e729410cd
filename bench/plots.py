"""PNG plots for the stress and soak benchmarks (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

WAHA_MB_ONE = 400.0
"""WAHA's published figure for one browser-engine session (about 400 MB)."""
WAHA_MB_PER_SESSION_AT_50 = 20 * 1024 / 50
"""WAHA's published figure for 50 browser-engine sessions (about 20 GB), per session."""


def stress_plot(result: dict[str, Any], path: Path) -> None:
    """Left: sessions created and WORKING over time, and the failover's returns; right: MiB per
    session here next to WAHA's published browser-engine figures."""
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    created = sorted(result.get("created_s", {}).values())
    working = sorted(result.get("per_session_s", {}).values())
    left.step(created, range(1, len(created) + 1), where="post", label="created (PUT 201)")
    left.step(working, range(1, len(working) + 1), where="post", label="WORKING")
    left.set_xlabel("seconds since the first PUT")
    left.set_ylabel("sessions")
    left.set_title(f"{result['sessions']} sessions, {result['page']} page")
    left.legend()
    back = sorted(result.get("failover", {}).get("back_s", {}).values())
    mid.step(back, range(1, len(back) + 1), where="post", color="tab:red")
    mid.set_xlabel("seconds since SIGKILL")
    mid.set_ylabel("sessions WORKING again")
    victim = result.get("failover", {}).get("victim")
    mid.set_title(f"failover of {victim}" if victim else "failover: not measured (see docs)")
    memory = result.get("memory", {})
    labels = [
        "chatscale\n(whole shard)",
        "chatscale\n(over idle shard)",
        "WAHA, 1\nsession",
        "WAHA, 50\nsessions",
    ]
    values = [
        float(memory.get("mib_per_session_docker", 0)),
        float(memory.get("mib_per_session_over_idle_shard", 0)),
        WAHA_MB_ONE,
        WAHA_MB_PER_SESSION_AT_50,
    ]
    bars = right.bar(labels, values, color=["tab:blue", "tab:cyan", "tab:gray", "tab:gray"])
    right.bar_label(bars, fmt="%.0f")
    right.tick_params(axis="x", labelsize=8)
    right.set_ylabel("MiB (MB for WAHA) per session")
    right.set_title("memory per session")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def soak_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Four panels over time: shard memory, memory per session, CPU, heartbeat age; sends and
    receipts (cumulative) and recycles as a fifth."""
    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True)
    shards = sorted({r["shard"] for r in rows if r["shard"] != "-"})
    times = sorted({r["t_s"] for r in rows})
    for shard in shards:
        # One point per sample, NaN where the shard did not exist: a recycled id's line breaks
        # instead of joining the old shard to the new one.
        mine = {r["t_s"]: r for r in rows if r["shard"] == shard}
        x = [t / 60 for t in times]
        for ax, key in zip(
            axes, ("docker_mib", "mib_per_session", "cpu_percent", "heartbeat_age_s"), strict=False
        ):
            ax.plot(x, [mine[t][key] if t in mine else math.nan for t in times], label=shard)
    axes[0].set_ylabel("shard MiB\n(docker stats)")
    axes[1].set_ylabel("MiB per session")
    axes[2].set_ylabel("CPU %\n(docker stats)")
    axes[3].set_ylabel("heartbeat age s")
    fleet = [r for r in rows if r["shard"] == "-"]
    x = [r["t_s"] / 60 for r in fleet]
    axes[4].plot(x, [r["sent_ok"] for r in fleet], label="sent (201)")
    axes[4].plot(x, [r["received"] for r in fleet], label="incoming seen")
    axes[4].set_ylabel("cumulative")
    # Failures and recycles are a handful against thousands of messages: their own axis.
    few = axes[4].twinx()
    few.plot(x, [r["failures"] for r in fleet], "r-", label="failed calls (right)")
    few.plot(x, [r["recycles"] for r in fleet], "k--", label="recycle events (right)")
    few.set_ylabel("failed calls, recycles")
    few.legend(fontsize="small", loc="lower right")
    axes[4].set_xlabel("minutes")
    for ax in axes:
        ax.legend(fontsize="small", loc="upper left")
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
