"""Soak benchmark (not CI): sessions under steady traffic for a while, sampled.

Run:  .venv/bin/python bench/bench_soak.py [--sessions 30] [--minutes 60] [--page trivial|heavy]
                                           [--max-age SECONDS]
Needs the images (scripts/build-images --with-services). Brings up the shipped
docker-compose.yml the way bench/bench_stress.py does (bench/stand.py), creates and logs in
--sessions sessions through the front, then for --minutes:

- messages out: every session sends one message through the front every --send-every seconds;
- messages in: every --incoming-every seconds a contact writes to each session's account on the
  stand-in (POST /api/incoming); a message counts as received once its id is in the session's
  seen-set (Redis: the messages its page reported to the shard);
- every --interval seconds a sample: per shard its memory and CPU (`docker stats`), its
  heartbeat's memory, sessions and age (now - the heartbeat's ts), memory per session; for the
  fleet, messages sent/accepted/failed, received, recycle events (the autoscaler's event stream)
  and shard restarts (a heartbeat's boot changed). With --max-age, policy.recycle.max_age
  replaces each shard (surge first, its sessions moved from their snapshots) that often.

Writes test-artifacts/bench-soak-<page>.csv, docs/bench-soak-<page>.png and prints markdown.
Tears everything down on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.plots import soak_plot
from bench.stand import KEYS, MIB, ROOT, Stand, StandConfig, header, percentile, phone_of

FIELDS = [
    "t_s",
    "shard",
    "sessions",
    "docker_mib",
    "cpu_percent",
    "heartbeat_mib",
    "mib_per_session",
    "heartbeat_age_s",
    "sent",
    "sent_ok",
    "failures",
    "incoming_posted",
    "received",
    "recycles",
    "restarts",
]


class Counters:
    def __init__(self) -> None:
        self.sent = 0
        self.sent_ok = 0
        self.failures: dict[str, int] = {}
        self.posted = 0
        self.received = 0
        self.restarts = 0
        self.boots: dict[str, str] = {}
        self.latencies: list[float] = []

    def fail(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1


async def sender(
    stand: Stand, http: aiohttp.ClientSession, sid: str, every: float, c: Counters, stop: float
) -> None:
    numbers = itertools.count()
    await asyncio.sleep(random.uniform(0, every))
    while time.monotonic() < stop:
        began = time.monotonic()
        code = await stand.send(http, sid, f"soak-out {sid} {next(numbers)}")
        c.sent += 1
        if code == 201:
            c.sent_ok += 1
            c.latencies.append(time.monotonic() - began)
        else:
            c.fail(f"send {code or 'no answer'}")
        await asyncio.sleep(max(0.0, every - (time.monotonic() - began)))


async def writer(
    stand: Stand, http: aiohttp.ClientSession, phone: str, every: float, c: Counters, stop: float
) -> None:
    numbers = itertools.count()
    await asyncio.sleep(random.uniform(0, every))
    while time.monotonic() < stop:
        code = await stand.incoming(http, phone, f"soak-in {phone} {next(numbers)}")
        if code == 200:
            c.posted += 1
        else:
            c.fail(f"incoming {code or 'no answer'}")
        await asyncio.sleep(every)


async def count_received(stand: Stand, sids: list[str], c: Counters) -> None:
    """Incoming messages the shards have seen on the pages: ids of messages not from the
    account ("false_...") in each session's seen-set (Redis). (The outbox is no measure: the
    autoscaler's deliverer removes what no receiver wants.)"""
    total = 0
    for sid in sids:
        members = await stand.r.zrange(KEYS.messages_seen(sid), 0, -1)
        total += sum(1 for m in members if m.startswith("false_") and ":" not in m)
    c.received = total


async def sample(
    stand: Stand, sids: list[str], t: float, c: Counters
) -> tuple[list[dict[str, Any]], int]:
    owners = await stand.owners(sids)
    beats = await stand.beats()
    stats = await asyncio.to_thread(stand.docker_stats)
    await count_received(stand, sids, c)
    recycles = len(await stand.recycle_events())
    now = time.time()
    rows: list[dict[str, Any]] = []
    for shard_id, beat in sorted(beats.items()):
        boot = beat.get("boot", "")
        if shard_id in c.boots and c.boots[shard_id] != boot:
            c.restarts += 1
        c.boots[shard_id] = boot
        held = sum(1 for o in owners.values() if o == shard_id)
        mem, cpu = stats.get(stand.container_of(shard_id), (float("nan"), float("nan")))
        rows.append(
            {
                "t_s": round(t, 1),
                "shard": shard_id,
                "sessions": held,
                "docker_mib": round(mem, 1),
                "cpu_percent": cpu,
                "heartbeat_mib": round(int(beat.get("memory_bytes", 0)) / MIB, 1),
                "mib_per_session": round(mem / held, 1) if held else float("nan"),
                "heartbeat_age_s": round(now - float(beat.get("ts", 0)), 2),
            }
        )
    rows.append(
        {
            "t_s": round(t, 1),
            "shard": "-",
            "sessions": len(sids),
            "sent": c.sent,
            "sent_ok": c.sent_ok,
            "failures": sum(c.failures.values()),
            "incoming_posted": c.posted,
            "received": c.received,
            "recycles": recycles,
            "restarts": c.restarts,
        }
    )
    return rows, recycles


async def run(args: argparse.Namespace, stand: Stand, result: dict[str, Any]) -> None:
    sids = [f"soak-{i:03d}" for i in range(args.sessions)]
    phones = {sid: phone_of(i) for i, sid in enumerate(sids)}
    await stand.start()
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await stand.first_shard_routed(http, 300)
        began = time.monotonic()
        deadline = began + args.timeout
        gate = asyncio.Semaphore(10)

        async def one(sid: str) -> None:
            async with gate:
                await stand.create(http, sid, deadline)
            await stand.log_in(http, sid, phones[sid], deadline)

        await asyncio.gather(*(one(s) for s in sids))
        while True:
            statuses = await stand.listing(http)
            if all(statuses.get(s) == "WORKING" for s in sids):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("not every session WORKING")
            await asyncio.sleep(1)
        result["setup_s"] = round(time.monotonic() - began, 1)
        print(f"{len(sids)} sessions WORKING after {result['setup_s']} s", flush=True)

        c = Counters()
        t0 = time.monotonic()
        stop = t0 + args.minutes * 60
        load = [
            asyncio.create_task(sender(stand, http, s, args.send_every, c, stop)) for s in sids
        ] + [
            asyncio.create_task(writer(stand, http, phones[s], args.incoming_every, c, stop))
            for s in sids
        ]
        csv_path = ROOT / "test-artifacts" / f"bench-soak-{args.page}.csv"
        csv_path.parent.mkdir(exist_ok=True)
        with csv_path.open("w", newline="") as fh:
            out = csv.DictWriter(fh, FIELDS, restval="")
            out.writeheader()
            while True:
                now = time.monotonic()
                new, _ = await sample(stand, sids, now - t0, c)
                rows += new
                out.writerows(new)
                fh.flush()
                fleet = new[-1]
                print(
                    f"{fleet['t_s']:7.0f}s sent {c.sent_ok}/{c.sent} in {c.posted} "
                    f"seen {c.received} fail {fleet['failures']} recycles {fleet['recycles']} "
                    + " ".join(f"{r['shard']}={r['docker_mib']:.0f}MiB" for r in new[:-1]),
                    flush=True,
                )
                if now >= stop:
                    break
                await asyncio.sleep(max(0.0, min(args.interval, stop - time.monotonic())))
            await asyncio.gather(*load)
            # Received messages the shards had not reported yet at the end: one last look.
            await asyncio.sleep(args.send_every)
            new, _ = await sample(stand, sids, time.monotonic() - t0, c)
            rows += new
            out.writerows(new)
        statuses = await stand.listing(http)
    result["csv"] = str(csv_path.relative_to(ROOT))
    result["working_at_end"] = sum(1 for s in sids if statuses.get(s) == "WORKING")
    result["rows"] = rows
    result["failures"] = c.failures
    result["send_latency_s"] = {
        "p50": percentile(c.latencies, 0.5),
        "p90": percentile(c.latencies, 0.9),
        "p99": percentile(c.latencies, 0.99),
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    shards = [r for r in rows if r["shard"] != "-" and r["sessions"]]
    fleet = [r for r in rows if r["shard"] == "-"]
    first_t = min(r["t_s"] for r in shards)
    last_t = max(r["t_s"] for r in shards)
    first = [r for r in shards if r["t_s"] == first_t]
    last = [r for r in shards if r["t_s"] == last_t]

    # A shard stopped between `docker stats` and the heartbeat read has no CPU figure (NaN).
    cpu = [r["cpu_percent"] for r in shards if not math.isnan(r["cpu_percent"])]

    def per(rs: list[dict[str, Any]]) -> float:
        return float(sum(r["docker_mib"] for r in rs) / max(sum(r["sessions"] for r in rs), 1))

    return {
        "samples": len(fleet),
        "mib_per_session_first": round(per(first), 1),
        "mib_per_session_last": round(per(last), 1),
        "shard_mib_first": round(sum(r["docker_mib"] for r in first), 1),
        "shard_mib_last": round(sum(r["docker_mib"] for r in last), 1),
        "shard_mib_max": round(max(r["docker_mib"] for r in shards), 1),
        "cpu_percent_mean": round(sum(cpu) / max(len(cpu), 1), 1),
        "cpu_percent_max": round(max(cpu, default=math.nan), 1),
        "heartbeat_age_p50": round(percentile([r["heartbeat_age_s"] for r in shards], 0.5), 2),
        "heartbeat_age_max": round(max(r["heartbeat_age_s"] for r in shards), 2),
        "end": fleet[-1],
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    e = s["end"]
    lat = result["send_latency_s"]
    return "\n".join(
        [
            f"Command: `{result['command']}`",
            f"Date: {result['date']}; machine: {result['machine']}; "
            f"load average at start: {result['load_average_at_start']}",
            "",
            "| what | value |",
            "|---|---|",
            f"| sessions / duration / samples | {result['sessions']} / {result['minutes']} min / "
            f"{s['samples']} |",
            f"| shard memory (docker stats), first / last / max sample | {s['shard_mib_first']} / "
            f"{s['shard_mib_last']} / {s['shard_mib_max']} MiB |",
            f"| MiB per session, first / last sample | {s['mib_per_session_first']} / "
            f"{s['mib_per_session_last']} |",
            f"| shard CPU (docker stats), mean / max | {s['cpu_percent_mean']} / "
            f"{s['cpu_percent_max']} % |",
            f"| heartbeat age, p50 / max | {s['heartbeat_age_p50']} / {s['heartbeat_age_max']} s |",
            f"| sends accepted (201) / tried | {e['sent_ok']} / {e['sent']} |",
            f"| send through the front p50 / p90 / p99 | {lat['p50']:.3f} / {lat['p90']:.3f} / "
            f"{lat['p99']:.3f} s |",
            f"| incoming posted / seen by the shards | {e['incoming_posted']} / {e['received']} |",
            f"| failed calls | {e['failures']} {result['failures'] or ''} |",
            f"| recycle events / shard restarts | {e['recycles']} / {e['restarts']} |",
            f"| sessions WORKING at the end | {result['working_at_end']} / {result['sessions']} |",
        ]
    )


async def main_async(args: argparse.Namespace) -> int:
    project = f"csbench-soak-{args.page}"
    recycle = {"max_age": args.max_age} if args.max_age else None
    heavy = args.page == "heavy"
    stand = Stand(StandConfig(project, args.max_sessions, args.max_shards, heavy, recycle))
    result = header(
        stand,
        command=args.command,
        sessions=args.sessions,
        minutes=args.minutes,
        page=args.page,
        max_sessions=args.max_sessions,
        recycle=recycle,
    )
    print(json.dumps(result), flush=True)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await run(args, stand, result)
        result["summary"] = summary(result)
    except BaseException as exc:
        result["error"] = repr(exc)
        raise
    finally:
        out = ROOT / "test-artifacts" / f"bench-soak-{args.page}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        await stand.close()
        print("torn down", flush=True)
    png = ROOT / "docs" / f"bench-soak-{args.page}.png"
    title = f"soak: {args.sessions} sessions, {args.minutes:g} min, {args.page} page"
    soak_plot(result["rows"], png, title)
    print(f"wrote {png}\n\n{markdown(result)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--page", choices=("trivial", "heavy"), default="trivial")
    parser.add_argument("--interval", type=float, default=12, help="seconds between samples")
    parser.add_argument("--send-every", type=float, default=30, help="seconds, per session")
    parser.add_argument("--incoming-every", type=float, default=30, help="seconds, per session")
    parser.add_argument("--max-sessions", type=int, default=50, help="per shard")
    parser.add_argument("--max-shards", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the setup")
    parser.add_argument(
        "--max-age",
        type=float,
        help="seconds: policy.recycle.max_age, shards recycled during the run (off if unset)",
    )
    args = parser.parse_args()
    args.command = " ".join(["bench/bench_soak.py", *sys.argv[1:]])
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
