"""Stress benchmark (not CI): N sessions through the shipped docker-compose.yml.

Run:  .venv/bin/python bench/bench_stress.py [--sessions 100] [--page trivial|heavy]
Needs the images (scripts/build-images --with-services). Brings up docker-compose.yml under a
project of its own (bench/stand.py) with the stand-in site (tests/fakesite) in a container on
the fleet's network, shards of --max-sessions (50), then:

1. creates N sessions through the nginx front (PUT, a 503 retried as a client would), logs each
   in by scanning its QR on the stand-in, and waits until all are WORKING: time to create all,
   time to all WORKING, per-session create -> WORKING p50/p90;
2. reads memory per shard (`docker stats` and the heartbeat's memory in Redis): MiB per session
   (whole shard / sessions, and growth since the browser came up / sessions) and sessions per GB;
3. sends one message per session through the front;
4. SIGKILLs the fullest shard container (`docker kill -s KILL`) and measures the time until all
   its sessions are WORKING again (with a new fencing token) through the front; checks that no
   new scan was needed (the stand-in's logged-in accounts did not change) and sends a message
   from each moved session.

`--page heavy` starts the stand-in in heavy mode (FAKESITE_HEAVY=1: a page that weighs like
WhatsApp Web). Writes JSON (test-artifacts/bench-stress-<page>.json), a PNG (docs/) and prints
markdown for docs/benchmarks.md. Tears everything down on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.plots import stress_plot
from bench.stand import MIB, ROOT, Stand, StandConfig, header, percentile, phone_of

WAHA_MB_ONE = 400.0
WAHA_GB_FIFTY = 20.0


async def run(args: argparse.Namespace, stand: Stand, result: dict[str, Any]) -> None:
    n = args.sessions
    sids = [f"stress-{i:03d}" for i in range(n)]
    phones = {sid: phone_of(i) for i, sid in enumerate(sids)}
    t0 = time.monotonic()
    await stand.start()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        result["timings_s"] = t = {}
        t["up_to_first_shard_routed"] = (
            await stand.first_shard_routed(http, 300) + time.monotonic() - t0
        )
        print(f"first shard routed after {t['up_to_first_shard_routed']:.1f} s", flush=True)

        # 1. create, scan, WORKING ---------------------------------------------------------
        began = time.monotonic()
        deadline = began + args.timeout
        created: dict[str, float] = {}
        working: dict[str, float] = {}
        gate = asyncio.Semaphore(args.concurrency)

        async def one(sid: str) -> None:
            async with gate:
                await stand.create(http, sid, deadline)
            created[sid] = time.monotonic()
            await stand.log_in(http, sid, phones[sid], deadline)

        async def watch() -> None:
            while len(working) < n:
                statuses = await stand.listing(http)
                now = time.monotonic()
                for sid, status in statuses.items():
                    if status == "WORKING" and sid in created and sid not in working:
                        working[sid] = now
                if now > deadline:
                    raise TimeoutError(f"only {len(working)}/{n} WORKING in {args.timeout} s")
                await asyncio.sleep(1.0)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one(sid) for sid in sids))
        t["create_all"] = max(created.values()) - began
        print(f"all {n} created after {t['create_all']:.1f} s", flush=True)
        await watcher
        t["all_working"] = max(working.values()) - began
        per = [working[s] - created[s] for s in sids]
        t["create_to_working_p50"] = percentile(per, 0.5)
        t["create_to_working_p90"] = percentile(per, 0.9)
        t["create_to_working_max"] = max(per)
        result["per_session_s"] = {s: round(working[s] - began, 2) for s in sids}
        result["created_s"] = {s: round(created[s] - began, 2) for s in sids}
        print(f"all {n} WORKING after {t['all_working']:.1f} s", flush=True)

        # 2. memory ----------------------------------------------------------------------------
        await asyncio.sleep(args.settle)
        result["memory"] = await memory(stand, sids)
        m = result["memory"]
        print(json.dumps(m, indent=1), flush=True)

        # 3. messages ----------------------------------------------------------------------------
        result["sends_before_kill"] = await sends(stand, http, sids, 1, args.concurrency)

        # 4. SIGKILL a full shard ------------------------------------------------------------
        owners = await stand.owners(sids)
        counts = {o: list(owners.values()).count(o) for o in set(owners.values())}
        victim = max(counts, key=lambda o: counts[o])
        moved = [s for s, o in owners.items() if o == victim]
        scans = len((await stand.site_state(http))["sessions"])
        before = await asyncio.gather(
            *(stand.call(http, "GET", f"/api/sessions/{s}") for s in moved)
        )
        tokens = {s: view.get("token") for s, (_, view) in zip(moved, before, strict=True)}
        kill = ["docker", "kill", "-s", "KILL", stand.container_of(victim)]
        await asyncio.to_thread(subprocess.run, kill, check=True, capture_output=True)
        killed = time.monotonic()
        back: dict[str, float] = {}
        while len(back) < len(moved):
            if time.monotonic() - killed > args.timeout:
                raise TimeoutError(f"only {len(back)}/{len(moved)} back after the kill")
            views = await asyncio.gather(
                *(stand.call(http, "GET", f"/api/sessions/{s}") for s in moved if s not in back)
            )
            now = time.monotonic()
            for s, (code, view) in zip([s for s in moved if s not in back], views, strict=True):
                new_token = str(view.get("token", "")) not in ("", str(tokens[s]))
                if code == 200 and view.get("status") == "WORKING" and new_token:
                    back[s] = now - killed
            await asyncio.sleep(1.0)
        t["kill_to_all_back"] = max(back.values())
        t["kill_to_back_p50"] = percentile(list(back.values()), 0.5)
        result["failover"] = {
            "victim": victim,
            "sessions": len(moved),
            "new_scans": len((await stand.site_state(http))["sessions"]) - scans,
            "back_s": {s: round(v, 2) for s, v in back.items()},
            "owners_after": sorted(set((await stand.owners(moved)).values())),
        }
        print(f"{len(moved)} sessions of {victim} back after {t['kill_to_all_back']:.1f} s")
        result["sends_after_kill"] = await sends(stand, http, moved, 2, args.concurrency)
        statuses = await stand.listing(http)
        result["working_at_end"] = sum(1 for s in sids if statuses.get(s) == "WORKING")
        await asyncio.sleep(args.settle)
        result["memory_after_restore"] = await memory(stand, sids)


async def sends(
    stand: Stand, http: aiohttp.ClientSession, sids: list[str], round_: int, concurrency: int
) -> dict[str, Any]:
    """One message from each session through the front, `concurrency` at a time; the answers
    by HTTP status (0: none within the client's 120 s)."""
    gate = asyncio.Semaphore(concurrency)
    began = time.monotonic()

    async def one(sid: str) -> int:
        async with gate:
            return await stand.send(http, sid, f"stress {sid} {round_}")

    codes = await asyncio.gather(*(one(s) for s in sids))
    by_status = {str(c): codes.count(c) for c in sorted(set(codes))}
    took = round(time.monotonic() - began, 1)
    return {"ok": codes.count(201), "total": len(codes), "by_status": by_status, "took_s": took}


async def memory(stand: Stand, sids: list[str]) -> dict[str, Any]:
    owners = await stand.owners(sids)
    beats = await stand.beats()
    stats = await asyncio.to_thread(stand.docker_stats)
    shards: dict[str, Any] = {}
    for shard_id, beat in sorted(beats.items()):
        held = sum(1 for o in owners.values() if o == shard_id)
        mem, cpu = stats.get(stand.container_of(shard_id), (float("nan"), float("nan")))
        shards[shard_id] = {
            "sessions": held,
            "docker_mib": round(mem, 1),
            "cpu_percent": cpu,
            "heartbeat_mib": round(int(beat.get("memory_bytes", 0)) / MIB, 1),
            "baseline_mib": round(int(beat.get("baseline_bytes") or 0) / MIB, 1),
        }
    full = [v for v in shards.values() if v["sessions"]]
    total_sessions = sum(v["sessions"] for v in full)
    docker_total = sum(v["docker_mib"] for v in full)
    beat_total = sum(v["heartbeat_mib"] for v in full)
    based = [v for v in full if v["baseline_mib"] > 0]
    growth = sum(v["heartbeat_mib"] - v["baseline_mib"] for v in based)
    idle = [v["docker_mib"] for v in shards.values() if not v["sessions"]]
    idle_mib = min(idle) if idle else float("nan")
    per = docker_total / total_sessions if total_sessions else float("nan")
    marginal = (docker_total - len(full) * idle_mib) / max(total_sessions, 1)
    return {
        "shards": shards,
        "sessions": total_sessions,
        "docker_mib_total": round(docker_total, 1),
        "mib_per_session_docker": round(per, 1),
        "mib_per_session_heartbeat": round(beat_total / max(total_sessions, 1), 1),
        "mib_per_session_growth": (
            round(growth / sum(v["sessions"] for v in based), 1) if based else float("nan")
        ),
        "idle_shard_mib": round(idle_mib, 1),
        "mib_per_session_over_idle_shard": round(marginal, 1),
        "sessions_per_gb": round(1024 / per, 1) if total_sessions else float("nan"),
        "other_containers_mib": {
            k: round(v[0], 1) for k, v in stats.items() if "shard" not in k.split("-")[-2:]
        },
    }


def markdown(result: dict[str, Any]) -> str:
    t = result["timings_s"]
    m = result["memory"]
    f = result["failover"]
    lines = [
        f"Command: `{result['command']}`",
        f"Date: {result['date']}; machine: {result['machine']}; "
        f"load average at start: {result['load_average_at_start']}",
        "",
        "| phase | time |",
        "|---|---|",
        f"| compose up -> first shard ready and routed | {t['up_to_first_shard_routed']:.1f} s |",
        f"| create all {result['sessions']} (first PUT -> last 201) | {t['create_all']:.1f} s |",
        f"| first PUT -> all WORKING (scans included) | {t['all_working']:.1f} s |",
        f"| per session PUT 201 -> WORKING, p50 / p90 / max | {t['create_to_working_p50']:.1f}"
        f" / {t['create_to_working_p90']:.1f} / {t['create_to_working_max']:.1f} s |",
        f"| SIGKILL of {f['victim']} ({f['sessions']} sessions) -> all WORKING again, "
        f"p50 / all | {t['kill_to_back_p50']:.1f} / {t['kill_to_all_back']:.1f} s |",
        f"| new scans needed after the kill | {f['new_scans']} |",
        f"| sends through the front before / after the kill | "
        f"{result['sends_before_kill']['ok']}/{result['sends_before_kill']['total']}"
        f" / {result['sends_after_kill']['ok']}/{result['sends_after_kill']['total']} |",
        "",
        "| shard | sessions | docker stats | heartbeat memory | browser baseline |",
        "|---|---|---|---|---|",
    ]
    for shard_id, v in m["shards"].items():
        lines.append(
            f"| {shard_id} | {v['sessions']} | {v['docker_mib']:.0f} MiB | "
            f"{v['heartbeat_mib']:.0f} MiB | {v['baseline_mib']:.0f} MiB |"
        )
    lines += [
        "",
        f"MiB per session: {m['mib_per_session_docker']} (docker stats, whole shard / sessions), "
        f"{m['mib_per_session_heartbeat']} (heartbeat), {m['mib_per_session_growth']} "
        f"(growth since the browser came up, shards whose heartbeat has a baseline), "
        f"{m['mib_per_session_over_idle_shard']} (over an idle shard's "
        f"{m['idle_shard_mib']} MiB); sessions per GB: {m['sessions_per_gb']}.",
    ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    project = f"csbench-stress-{args.page}"
    stand = Stand(StandConfig(project, args.max_sessions, args.max_shards, args.page == "heavy"))
    result = header(
        stand,
        command=args.command,
        sessions=args.sessions,
        page=args.page,
        max_sessions=args.max_sessions,
    )
    print(json.dumps(result), flush=True)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await run(args, stand, result)
        result["waha"] = {"mb_one_session": WAHA_MB_ONE, "gb_for_50": WAHA_GB_FIFTY}
    except BaseException as exc:
        result["error"] = repr(exc)
        raise
    finally:
        out = ROOT / "test-artifacts" / f"bench-stress-{args.page}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}", flush=True)
        await stand.close()
        print("torn down", flush=True)
    png = ROOT / "docs" / f"bench-stress-{args.page}.png"
    stress_plot(result, png)
    print(f"wrote {png}\n\n{markdown(result)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--page", choices=("trivial", "heavy"), default="trivial")
    parser.add_argument("--max-sessions", type=int, default=50, help="per shard")
    parser.add_argument(
        "--max-shards", type=int, default=0, help="default: enough full shards plus one"
    )
    parser.add_argument("--concurrency", type=int, default=10, help="PUTs in flight")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    parser.add_argument("--settle", type=float, default=15, help="seconds before a memory read")
    args = parser.parse_args()
    args.max_shards = args.max_shards or -(-args.sessions // args.max_sessions) + 1
    args.command = " ".join(["bench/bench_stress.py", *sys.argv[1:]])
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
