"""Benchmark the shard: memory per session and create vs restore time, against real processes.

Run:  .venv/bin/python bench/bench_shard.py        (about 3 minutes on 2 cores)
Starts its own redis-server, the stand-in site (tests/fakesite) and `shard` processes (via
tests/support), all on loopback, and stops them all on exit, also on errors and Ctrl-C.
Prints markdown for docs/benchmarks.md. Targets: PSS per session with one shared Chromium
<= 0.4x that of a separate Chromium per session; restoring N sessions after SIGKILL <= 1.2x
the time to create them.

1. Memory: PSS (smaps_rollup) summed over every process carrying a tag in its environment and
   every process below those (Chromium's zygotes, renderers, GPU and utility processes overwrite
   their environment with their process title, so the tag alone misses them). The median of 3
   readings 1 s apart after a settle pause, for:
   - the shard (its Python, the Playwright driver, Chromium) with 0 and with N sessions on the
     stand-in's logged-in page, and again after SIGKILL + restore;
   - a worker (this script, `--separate-worker`) with the same parts but one Chromium per session
     (the flags of shard/browser.py), each page logged in by the same QR scan. It runs after the
     shard is gone: PSS splits shared pages among whoever maps them.
2. Time: create N sessions (first PUT -> all WORKING, scans included, browser running) vs
   SIGKILL + a new process with the same SHARD_ID: (a) process start -> /health answers,
   (b) /health -> all N WORKING in the new process's GET /api/sessions. Restores run with
   RESTORE_CONCURRENCY 4 (default), 2, 8, then 4 again (the repeat shows the noise). A second
   create of N new sessions on a fresh shard-2 follows; ratios use the mean of both creates.
   Each phase also reports the CPU used (whole machine, and by Chromium / shard / driver).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

import aiohttp  # noqa: E402
import redis  # noqa: E402
from shard.browser import CHROMIUM_ARGS  # noqa: E402
from support.procs import free_port, port_open, start, start_redis, stop, wait_for  # noqa: E402
from support.shards import TAG, Api, ShardFleet, ShardProc, scan, site_state  # noqa: E402

from chatscale_contract import proctree  # noqa: E402
from chatscale_contract.keys import Keys  # noqa: E402

SHARD_ID = "shard-1"
CHROMIUM = "/usr/lib/chromium/chromium"
SEPARATE_MARK = "CHATSCALE_BENCH_BROWSER"
"""Set in the environment of each separately launched Chromium (as the shard sets its MARKER)."""
SHARD_ENV = {"MAX_SESSIONS": "25", "SNAPSHOT_INTERVAL": "300"}
"""Heartbeat 1 s / timeout 4 s come from ShardFleet; RESTORE_CONCURRENCY is the shard's default
(4) unless swept. SNAPSHOT_INTERVAL is the production default, so no periodic snapshot runs
during a measurement (the snapshot on reaching WORKING still happens)."""
KEYS = Keys()
MIB = 1024 * 1024
POLL = 0.1
TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("chromium", "shard", "driver")


# --- processes ----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state [0], ppid [1], utime [11],
    stime [12], cutime [13], cstime [14], starttime [19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(tag: str) -> dict[int, float]:
    """pid -> start time of the shard tagged `tag` and every process below it (proctree.py)."""
    return {p.pid: p.start for p in proctree.marked_tree(TAG, tag)}


def still_alive(procs: dict[int, float]) -> list[int]:
    """Those of `procs` (pid -> start time) still running."""
    recorded = [proctree.Proc(pid, 0, start, None) for pid, start in procs.items()]
    return sorted(p.pid for p in proctree.alive(recorded))


def kill_all(procs: dict[int, float]) -> list[int]:
    """SIGKILL those of `procs` still alive; returns them."""
    alive = still_alive(procs)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def kind(pid: int) -> str:
    """chromium (incl. crashpad), driver (Playwright's node) or shard (the Python process)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "gone"
    if exe.startswith(os.path.dirname(CHROMIUM) + "/"):
        return "chromium"
    return "driver" if os.path.basename(exe) == "node" else "shard"


# --- memory -------------------------------------------------------------------------------------


def pss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Memory:
    processes: int
    total: int
    browser: int
    """Only the Chromium processes (browser, zygotes, renderers, GPU, utilities, crashpad)."""
    sweep: float = 0.0
    """Seconds one PSS sweep over the processes took (the shard's heartbeat does a similar one)."""


def read_memory(tag: str) -> Memory:
    began = time.perf_counter()
    pids = process_tree(tag)
    sizes = {pid: pss_bytes(pid) for pid in pids}
    browser = sum(size for pid, size in sizes.items() if kind(pid) == "chromium")
    return Memory(len(pids), sum(sizes.values()), browser, time.perf_counter() - began)


async def settled_memory(tag: str, settle: float) -> Memory:
    """Median of 3 readings 1 s apart, after `settle` seconds."""
    await asyncio.sleep(settle)
    readings = []
    for n in range(3):
        if n:
            await asyncio.sleep(1)
        readings.append(await asyncio.to_thread(read_memory, tag))
    return Memory(
        int(statistics.median(r.processes for r in readings)),
        int(statistics.median(r.total for r in readings)),
        int(statistics.median(r.browser for r in readings)),
        statistics.median(r.sweep for r in readings),
    )


# --- CPU ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuMark:
    at: float
    busy: float
    """Machine-wide busy CPU seconds (all cores) since boot, steal excluded."""
    steal: float
    """CPU seconds the hypervisor gave to others while we wanted to run."""
    procs: dict[tuple[int, float], tuple[str, float]]
    """(pid, start time) -> (kind, CPU seconds incl. reaped children) for a tag's tree."""


def cpu_mark(tag: str | None) -> CpuMark:
    line = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(v) for v in line]
    # user nice system idle iowait irq softirq steal
    busy = (sum(ticks[:7]) - ticks[3] - ticks[4]) / TICK
    steal = ticks[7] / TICK
    procs: dict[tuple[int, float], tuple[str, float]] = {}
    for pid, started in (process_tree(tag) if tag else {}).items():
        fields = _stat(pid)
        if fields:
            used = sum(int(v) for v in fields[11:15]) / TICK
            procs[(pid, started)] = (kind(pid), used)
    return CpuMark(time.monotonic(), busy, steal, procs)


@dataclass(frozen=True)
class CpuUse:
    wall: float
    busy: float
    steal: float
    by_kind: dict[str, float]

    @property
    def load(self) -> float:
        """Busy fraction of all cores."""
        return self.busy / (self.wall * (os.cpu_count() or 1))


def cpu_since(before: CpuMark, tag: str) -> CpuUse:
    after = cpu_mark(tag)
    by_kind = dict.fromkeys(KINDS, 0.0)
    for key, (what, used) in after.procs.items():
        earlier = before.procs.get(key, (what, 0.0))[1]
        by_kind[what] = by_kind.get(what, 0.0) + used - earlier
    by_kind["other"] = after.busy - before.busy - sum(by_kind.values())
    return CpuUse(
        after.at - before.at, after.busy - before.busy, after.steal - before.steal, by_kind
    )


# --- what this script owns ----------------------------------------------------------------------


@dataclass
class Owned:
    """Everything this script started, for the cleanup in `finally`."""

    folder: Path
    redis: subprocess.Popen[bytes] | None = None
    site: subprocess.Popen[bytes] | None = None
    fleet: ShardFleet | None = None
    worker: subprocess.Popen[bytes] | None = None
    worker_tag: str = ""
    done: bool = False
    seen: dict[int, float] = field(default_factory=dict)
    """Every process of a tag's tree seen at cleanup (pid -> start time)."""

    def tags(self) -> list[str]:
        shard_tags = [s.tag for s in self.fleet.procs] if self.fleet else []
        return [*shard_tags, *([self.worker_tag] if self.worker_tag else [])]

    def cleanup(self) -> list[int]:
        """Stop every process; return the pids still alive afterwards (should be none)."""
        if self.done:
            return still_alive(self.seen)
        self.done = True
        for tag in self.tags():
            self.seen.update(process_tree(tag))
        if self.worker is not None:
            if self.worker.poll() is None:
                with contextlib.suppress(OSError):
                    if self.worker.stdin is not None:
                        self.worker.stdin.close()  # the worker closes its browsers and exits
                try:
                    self.worker.wait(20)
                except subprocess.TimeoutExpired:
                    self.worker.kill()
                    self.worker.wait(10)
            with contextlib.suppress(OSError):
                if self.worker.stdout is not None:
                    self.worker.stdout.close()
        if self.fleet is not None:
            for shard in self.fleet.procs:  # quick: SIGKILL, then whatever is left is killed
                if shard.proc.poll() is None:
                    shard.sigkill()
            self.fleet.stop_all()
        for tag in self.tags():
            self.seen.update(process_tree(tag))
        kill_all(self.seen)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not still_alive(self.seen), 10, "processes to exit")
        for proc in (self.site, self.redis):
            if proc is not None:
                stop(proc)
        return still_alive(self.seen)


def own_redis(owned: Owned) -> str:
    owned.redis, url = start_redis(owned.folder)
    return f"{url}/0"


def start_site(owned: Owned, heavy: bool = False) -> str:
    port = free_port()
    log = owned.folder / "fakesite.log"
    argv = [sys.executable, "-m", "fakesite", "--port", str(port), "--qr-rotate-seconds", "60"]
    if heavy:  # the stand-in's page that loads like WhatsApp Web (tests/fakesite/README.md)
        argv.append("--heavy")
    owned.site = start(argv, log, {"PYTHONPATH": str(TESTS)})
    wait_for(lambda: port_open(port), 15, f"fakesite (log: {log})")
    return f"http://127.0.0.1:{port}"


# --- the shard ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Killed:
    processes: int
    gone_after: float
    survivors: list[int]
    """Still alive 15 s after the SIGKILL (then killed by this script)."""


async def sigkill_shard(shard: ShardProc) -> Killed:
    """SIGKILL only the shard's own process, as a crash would; watch its whole tree go."""
    procs = await asyncio.to_thread(process_tree, shard.tag)
    killed = time.monotonic()
    shard.sigkill()
    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(wait_for, lambda: not still_alive(procs), 15, "old processes")
    gone_after = time.monotonic() - killed
    survivors = kill_all(procs)  # do not let survivors skew the rest (they are reported)
    return Killed(len(procs), gone_after, survivors)


async def wait_health(http: aiohttp.ClientSession, shard: ShardProc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if shard.proc.poll() is not None:
            raise RuntimeError(f"{shard.shard_id} exited (log: {shard.log})")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{shard.url}/health", timeout=aiohttp.ClientTimeout(2)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{shard.shard_id} /health did not answer (log: {shard.log})")


async def live_statuses(api: Api) -> dict[str, str]:
    code, listing, _ = await api.call("GET", "/admin/sessions")
    if code != 200:
        return {}
    return {s["id"]: s["status"] for s in listing["sessions"]}


async def shard_means(api: Api) -> dict[str, float]:
    """Mean session open and snapshot seconds from the shard's /metrics."""
    _, text, _ = await api.call("GET", "/metrics")
    values: dict[str, float] = {}
    for line in (text.decode() if isinstance(text, bytes) else str(text)).splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_seconds_sum", "_seconds_count")):
            values[name] = float(value)
    means = {}
    for what in ("session_open", "snapshot"):
        total = values.get(f"chatscale_shard_{what}_seconds_sum", 0.0)
        count = values.get(f"chatscale_shard_{what}_seconds_count", 0.0)
        means[what] = total / count if count else 0.0
    return means


@dataclass
class Phase:
    """One create or restore of all sessions."""

    name: str
    concurrency: str
    to_health: float = 0.0
    """(a): process start -> /health (restores only)."""
    to_working: float = 0.0
    """create: first PUT -> all WORKING; restore (b): /health -> all WORKING."""
    working_at: list[float] = field(default_factory=list)
    """When each session was first seen WORKING, from the phase's start, sorted."""
    cpu: CpuUse | None = None
    means: dict[str, float] = field(default_factory=dict)
    old_processes: int = 0
    gone_after: float = 0.0
    survivors: list[int] = field(default_factory=list)
    scans_before: int = 0
    scans_after: int = 0
    saw_qr: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.to_health + self.to_working


async def create_all(
    api: Api, http: aiohttp.ClientSession, site: str, sids: list[str], tag: str, name: str
) -> Phase:
    """PUT every session at once, scan each QR as it shows, until all are WORKING."""
    phase = Phase(name, "4 (default)")
    mark = await asyncio.to_thread(cpu_mark, tag)
    started = time.monotonic()
    puts = await asyncio.gather(
        *(api.call("PUT", f"/api/sessions/{sid}", {"workspace_id": "bench"}) for sid in sids)
    )
    for sid, (code, body, _) in zip(sids, puts, strict=True):
        if code != 201:
            raise RuntimeError(f"PUT {sid}: {code} {body}")
    scanned: set[str] = set()
    busy: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()
    working: dict[str, float] = {}

    async def scan_one(sid: str, phone: str) -> None:
        try:
            code, qr, _ = await api.call("GET", f"/api/sessions/{sid}/qr?format=raw")
            if code == 200:
                await scan(http, site, qr["qr"], phone)
                scanned.add(sid)
        except AssertionError as exc:  # the ref rotated between read and scan: read it again
            print(f"  (rescan {sid}: {exc})", file=sys.stderr)
        finally:
            busy.discard(sid)

    while len(working) < len(sids):
        if time.monotonic() - started > 180:
            raise TimeoutError("not all sessions WORKING after 180 s")
        statuses = await live_statuses(api)
        for n, sid in enumerate(sids):
            status = statuses.get(sid)
            if status == "FAILED":
                raise RuntimeError(f"session {sid} FAILED")
            if status == "WORKING":
                working.setdefault(sid, time.monotonic() - started)
            elif status == "SCAN_QR_CODE" and sid not in scanned and sid not in busy:
                busy.add(sid)
                task = asyncio.create_task(scan_one(sid, f"4915{n:09d}"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if len(working) < len(sids):
            await asyncio.sleep(POLL)
    phase.to_working = time.monotonic() - started
    phase.cpu = await asyncio.to_thread(cpu_since, mark, tag)
    phase.working_at = sorted(working.values())
    phase.means = await shard_means(api)
    return phase


def snapshot_size(db: redis.Redis, sid: str) -> int:
    """The compressed snapshot's bytes (Redis holds them as base64 text in a hash)."""
    data = db.hget(KEYS.snapshot(sid), "data")
    return len(base64.b64decode(data)) if isinstance(data, bytes) else 0


async def wait_snapshots(db: redis.Redis, api: Api, sids: list[str], timeout: float) -> float:
    """Until every session has a snapshot saved under its current token (by this process)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        code, listing, _ = await api.call("GET", "/admin/sessions")
        tokens = {s["id"]: str(s["token"]) for s in listing["sessions"]} if code == 200 else {}

        def current(tokens: dict[str, str] = tokens) -> bool:
            saved = [db.hget(KEYS.snapshot(sid), "token") for sid in sids]
            return all(
                t is not None and t.decode() == tokens.get(sid)
                for sid, t in zip(sids, saved, strict=True)
            )

        if await asyncio.to_thread(current):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise TimeoutError("not every session has a current snapshot")


async def kill_and_restore(
    fleet: ShardFleet,
    old: ShardProc,
    http: aiohttp.ClientSession,
    site: str,
    sids: list[str],
    concurrency: int | None,
) -> tuple[ShardProc, Phase]:
    phase = Phase("restore", "4 (default)" if concurrency is None else str(concurrency))
    phase.scans_before = len((await site_state(http, site))["sessions"])
    killed = await sigkill_shard(old)
    phase.old_processes, phase.gone_after = killed.processes, killed.gone_after
    phase.survivors = killed.survivors

    env = dict(SHARD_ENV)
    if concurrency is not None:
        env["RESTORE_CONCURRENCY"] = str(concurrency)
    mark = await asyncio.to_thread(cpu_mark, None)  # the new process tree starts from zero
    began = time.monotonic()
    new = fleet.start(SHARD_ID, wait=False, **env)
    await wait_health(http, new, 60)
    healthy = time.monotonic()
    phase.to_health = healthy - began
    api = Api(http, new.url)
    working: dict[str, float] = {}
    saw_qr: set[str] = set()
    while len(working) < len(sids):
        if time.monotonic() - healthy > 120:
            raise TimeoutError(f"restore incomplete after 120 s (log: {new.log})")
        statuses = await live_statuses(api)
        for sid in sids:
            if statuses.get(sid) == "WORKING":
                working.setdefault(sid, time.monotonic() - began)
            elif statuses.get(sid) == "SCAN_QR_CODE":
                saw_qr.add(sid)
            elif statuses.get(sid) == "FAILED":
                raise RuntimeError(f"restore of {sid} FAILED (log: {new.log})")
        if len(working) < len(sids):
            await asyncio.sleep(POLL)
    phase.to_working = time.monotonic() - healthy
    phase.cpu = await asyncio.to_thread(cpu_since, mark, new.tag)
    phase.working_at = sorted(working.values())
    phase.saw_qr = sorted(saw_qr)
    phase.scans_after = len((await site_state(http, site))["sessions"])
    phase.means = await shard_means(api)
    return new, phase


# --- separate browsers (a child process of this script) -----------------------------------------


async def separate_worker(site: str, count: int, concurrency: int) -> None:
    """One Chromium per session, each logged in by a scan; print READY, wait for stdin EOF."""
    from playwright.async_api import Browser, async_playwright

    started = time.monotonic()
    browsers: list[Browser] = []
    gate = asyncio.Semaphore(concurrency)
    async with async_playwright() as pw, aiohttp.ClientSession() as http:

        async def one(n: int) -> None:
            async with gate:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=list(CHROMIUM_ARGS),
                    env={**os.environ, SEPARATE_MARK: str(n)},
                )
                browsers.append(browser)
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                await page.goto(site, wait_until="domcontentloaded")
                for _ in range(3):
                    box = page.locator("div[data-ref]")
                    await box.wait_for(timeout=60_000)
                    try:
                        ref = await box.get_attribute("data-ref") or ""
                        await scan(http, site, ref, f"49152{n:08d}")
                        break
                    except AssertionError:  # rotated meanwhile: read it again
                        await asyncio.sleep(0.5)
                await page.locator("#pane-side").wait_for(timeout=60_000)

        await asyncio.gather(*(one(n) for n in range(count)))
        print(f"READY {time.monotonic() - started:.2f}", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
        for browser in browsers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 10)


def spawn_worker(owned: Owned, site: str, count: int) -> Path:
    """This script in worker mode, tagged like a shard so all its processes can be found."""
    owned.worker_tag = f"bench-separate-{os.getpid()}-{time.monotonic_ns()}"
    log = owned.folder / "separate-worker.log"
    argv = [sys.executable, __file__, "--separate-worker", site, "--sessions", str(count)]
    with log.open("ab") as err:
        owned.worker = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, TAG: owned.worker_tag},
            start_new_session=True,
        )
    return log


async def measure_separate(
    owned: Owned, site: str, count: int, settle: float
) -> tuple[Memory, float]:
    log = spawn_worker(owned, site, count)
    assert owned.worker is not None and owned.worker.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(owned.worker.stdout.readline), 240)
    if not line.startswith(b"READY"):
        raise RuntimeError(f"separate-browser worker failed (log: {log})")
    memory = await settled_memory(owned.worker_tag, settle)
    return memory, float(line.split()[1])


# --- report -------------------------------------------------------------------------------------


def machine() -> str:
    def first(path: str, prefix: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":" if ":" in line else "=", 1)[1].strip().strip('"')
        return ""

    ram = int(first("/proc/meminfo", "MemTotal:").split()[0] or 0) * 1024
    chromium = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, timeout=10, check=False)
        chromium = out.stdout.decode().strip()
    return (
        f"{os.cpu_count()} CPU ({first('/proc/cpuinfo', 'model name')}), "
        f"{ram / 1024**3:.1f} GiB RAM, {first('/etc/os-release', 'PRETTY_NAME=')}, "
        f"kernel {platform.release()}, Python {platform.python_version()}, {chromium}"
    )


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def mib(value: float) -> str:
    return f"{value / MIB:,.0f} MiB"


@dataclass
class Results:
    count: int
    base: Memory | None = None
    shared: Memory | None = None
    restored: Memory | None = None
    separate: Memory | None = None
    separate_login: float = 0.0
    creates: list[Phase] = field(default_factory=list)
    restores: list[Phase] = field(default_factory=list)
    final: list[Killed] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)
    page: str = "light"
    snapshot_bytes: list[int] = field(default_factory=list)
    """Each session's compressed snapshot in Redis before the first kill."""


def report_memory(r: Results) -> None:
    assert r.base is not None and r.shared is not None
    n = r.count
    print(f"\n### Memory, {n} sessions on the stand-in's logged-in page\n")
    print(
        "| setup | processes | total PSS | PSS / session | Chromium-only PSS | Chromium / session |"
    )
    print("|---|---|---|---|---|---|")
    b = r.base
    print(
        f"| shard, 0 sessions (baseline) | {b.processes} | {mib(b.total)} | | {mib(b.browser)} | |"
    )
    rows = [(f"shard, {n} sessions (one Chromium, a context each)", r.shared)]
    if r.restored is not None:
        rows.append((f"shard, {n} sessions after SIGKILL + restore", r.restored))
    if r.separate is not None:
        rows.append((f"{n} separate Chromium browsers, one page each", r.separate))
    for name, m in rows:
        print(
            f"| {name} | {m.processes} | {mib(m.total)} | {mib(m.total / n)} | "
            f"{mib(m.browser)} | {mib(m.browser / n)} |"
        )
    marginal = (r.shared.total - b.total) / n
    print(f"\nshard marginal cost per session ((total - baseline) / {n}): {mib(marginal)}")
    if r.separate is not None:
        sep = r.separate
        print(
            f"ratio shared/separate per session, total PSS: **{r.shared.total / sep.total:.2f}** "
            f"(target <= 0.4); Chromium-only: {r.shared.browser / sep.browser:.2f}; "
            f"marginal/separate: {marginal / (sep.total / n):.2f}  "
        )
        print(
            "(total = the Python process, Playwright's node driver and every Chromium process; "
            "the separate browsers share one Python and one driver, the shard has its own)  "
        )
        print(f"separate browsers: launch + log in took {r.separate_login:.1f} s, 4 at a time  ")
    print(
        f"one PSS sweep over the shard's {r.shared.processes} processes took "
        f"{r.shared.sweep * 1000:.0f} ms (the shard's heartbeat sweeps its tree every "
        "HEARTBEAT_INTERVAL when no cgroup limit applies)"
    )


def shard_cpu(p: Phase) -> float:
    """CPU-seconds of the shard's processes (Chromium, Python, driver) during a phase."""
    assert p.cpu is not None
    return sum(p.cpu.by_kind[k] for k in KINDS)


def report_time(r: Results) -> None:
    assert r.creates
    create = statistics.mean(p.to_working for p in r.creates)
    create_cpu = statistics.mean(shard_cpu(p) for p in r.creates)
    print(f"\n### Time, {r.count} sessions\n")
    print(
        "| case | RESTORE_CONCURRENCY | (a) start -> /health | (b) /health -> all WORKING "
        "| (a)+(b) | **restore/create (a)+(b)** | restore/create (b) | CPU restore/create |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for p in r.creates:
        print(
            f"| {p.name}: first PUT -> all WORKING, scans incl. | 4 (default) | | | "
            f"{p.to_working:.1f} s | | | |"
        )
    for p in r.restores:
        print(
            f"| restore after SIGKILL | {p.concurrency} | {p.to_health:.1f} s | "
            f"{p.to_working:.1f} s | {p.total:.1f} s | **{p.total / create:.2f}** | "
            f"{p.to_working / create:.2f} | {shard_cpu(p) / create_cpu:.2f} |"
        )
    print(
        f"\nratios against the mean create ({create:.1f} s, {create_cpu:.1f} CPU-s): "
        "restore/create = ((a)+(b)) / create, the outage from the new process's start "
        "(target <= 1.2); (b)/create leaves out the browser launch, which a create does not "
        "include; CPU = CPU-seconds of the shard's processes, steadier than wall time on a "
        "saturated machine. Single runs: compare the two creates and the two default restores "
        "for the noise."
    )
    if len(r.restores) > 1:
        by_conc: dict[str, list[float]] = {}
        for p in r.restores:
            by_conc.setdefault(p.concurrency.split()[0], []).append(p.total)
        best = min(by_conc, key=lambda c: statistics.mean(by_conc[c]))
        print(f"fastest restore (mean (a)+(b) per setting): RESTORE_CONCURRENCY={best}")

    print(
        "\n| phase | sessions WORKING at: first / median / last | mean open | mean snapshot ",
        end="",
    )
    print("| CPU busy (all cores) | Chromium | shard | driver | other | steal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in [*r.creates, *r.restores]:
        name = p.name if p.name.startswith("create") else f"restore, {p.concurrency}"
        w = p.working_at
        cpu = p.cpu
        assert cpu is not None
        k = cpu.by_kind
        print(
            f"| {name} | {w[0]:.1f} / {statistics.median(w):.1f} / {w[-1]:.1f} s | "
            f"{p.means.get('session_open', 0):.2f} s | {p.means.get('snapshot', 0):.2f} s | "
            f"{cpu.load:.0%} of {cpu.wall:.1f} s | {k['chromium']:.1f} s | {k['shard']:.1f} s | "
            f"{k['driver']:.1f} s | {k['other']:.1f} s | {cpu.steal:.1f} s |"
        )
    print(
        "\n(times from the phase's start: first PUT, or the new process's start; 'open' is the "
        "shard's chatscale_shard_session_open_seconds: context (+ snapshot applied), page, "
        "navigation; CPU in CPU-seconds over the phase: Chromium, the shard's Python, "
        "Playwright's node driver, other = the rest of the machine (this script, the site, "
        "Redis, the kernel and whatever else runs there), steal = taken by the hypervisor)"
    )


def report_checks(r: Results) -> None:
    print("\n### Checks\n")
    if r.snapshot_bytes:
        sizes = r.snapshot_bytes
        print(
            f"- page: {r.page}; snapshots (zlib) per session: median"
            f" {statistics.median(sizes) / 1024:,.0f} KiB, largest {max(sizes) / 1024:,.0f} KiB"
        )
    for p in r.restores:
        scans = "unchanged" if p.scans_after == p.scans_before else "CHANGED: new scans!"
        survived = "none" if not p.survivors else f"SURVIVED: pids {p.survivors}"
        qr = "none" if not p.saw_qr else f"{len(p.saw_qr)} ({', '.join(p.saw_qr)})"
        print(
            f"- restore, concurrency {p.concurrency}: site logins {p.scans_before} -> "
            f"{p.scans_after} ({scans}); sessions seen asking for a QR: {qr}; the killed shard "
            f"had {p.old_processes} processes, survivors: {survived} (all gone "
            f"{p.gone_after:.1f} s after the SIGKILL)"
        )
    for name, f in zip(("shard-1, last", "shard-2"), r.final, strict=False):
        survived = "none" if not f.survivors else f"SURVIVED: pids {f.survivors}"
        print(
            f"- SIGKILL of {name}: {f.processes} processes, survivors: "
            f"{survived} (all gone {f.gone_after:.1f} s after the SIGKILL)"
        )
    print(f"- processes left after cleanup: {r.leftovers or 'none'}")


# --- main ---------------------------------------------------------------------------------------


async def run(owned: Owned, args: argparse.Namespace) -> Results:
    r = Results(args.sessions)
    sids = [f"bench-{n:02d}" for n in range(r.count)]
    redis_url = own_redis(owned)
    site = start_site(owned, args.heavy)
    owned.fleet = fleet = ShardFleet(redis_url, site, owned.folder)
    db = redis.Redis.from_url(redis_url)
    rounds = [None] if args.no_sweep else [None, 2, 8, None]
    note = sys.stderr
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            # The heavy page fills IndexedDB after the login, so the snapshot taken as a session
            # turns WORKING misses some of it: snapshot again soon, and wait for that below.
            first = {**SHARD_ENV, "SNAPSHOT_INTERVAL": "10"} if args.heavy else SHARD_ENV
            shard = fleet.start(SHARD_ID, wait=False, **first)
            await wait_health(http, shard, 60)
            r.base = await settled_memory(shard.tag, args.settle)
            print(f"baseline: {mib(r.base.total)}, {r.base.processes} processes", file=note)

            api = Api(http, shard.url)
            create = await create_all(api, http, site, sids, shard.tag, "create #1 (shard-1)")
            r.creates.append(create)
            print(f"created {r.count} in {create.to_working:.1f} s", file=note)
            await wait_snapshots(db, api, sids, 60)
            if args.heavy:
                await asyncio.sleep(25)  # two more snapshots of every session
            r.page = "heavy" if args.heavy else "light"
            r.snapshot_bytes = [snapshot_size(db, sid) for sid in sids]
            r.shared = await settled_memory(shard.tag, args.settle)
            print(f"shared: {mib(r.shared.total)}", file=note)

            for concurrency in rounds:
                shard, phase = await kill_and_restore(fleet, shard, http, site, sids, concurrency)
                r.restores.append(phase)
                print(f"restore {phase.concurrency}: {phase.total:.1f} s", file=note)
                if r.restored is None:
                    r.restored = await settled_memory(shard.tag, args.settle)
                await wait_snapshots(db, Api(http, shard.url), sids, 60)  # before the next kill
            r.final.append(await sigkill_shard(shard))

            # A second create (new ids, a new shard id once shard-1's lease lapsed): one create
            # alone is too noisy a denominator.
            gone = KEYS.shard(SHARD_ID)
            await asyncio.to_thread(wait_for, lambda: not db.exists(gone), 15, "lease to lapse")
            shard = fleet.start("shard-2", wait=False, **SHARD_ENV)
            await wait_health(http, shard, 60)
            await asyncio.sleep(args.settle)
            api = Api(http, shard.url)
            more = [f"bench-b{n:02d}" for n in range(r.count)]
            create = await create_all(api, http, site, more, shard.tag, "create #2 (shard-2)")
            r.creates.append(create)
            print(f"created {r.count} in {create.to_working:.1f} s", file=note)
            # Alone: PSS splits the pages shared between the shard's and the browsers' processes.
            r.final.append(await sigkill_shard(shard))

            if not args.no_separate:
                r.separate, r.separate_login = await measure_separate(
                    owned, site, r.count, args.settle
                )
                print(f"separate: {mib(r.separate.total)}", file=note)
    finally:
        db.close()
    r.leftovers = await asyncio.to_thread(owned.cleanup)
    return r


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--settle", type=float, default=4.0, help="seconds before reading PSS")
    parser.add_argument("--no-sweep", action="store_true", help="only RESTORE_CONCURRENCY 4")
    parser.add_argument("--heavy", action="store_true", help="the stand-in's heavy page")
    parser.add_argument("--no-separate", action="store_true", help="skip the separate browsers")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log folder")
    parser.add_argument("--separate-worker", metavar="SITE", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.separate_worker:
        asyncio.run(separate_worker(args.separate_worker, args.sessions, 4))
        return
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    command = shlex.join([python, os.path.relpath(__file__), *sys.argv[1:]])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print("## Shard: memory per session, create vs restore time (`bench/bench_shard.py`)\n")
    print(f"command: `{command}`  ")
    print(f"date: {now}  ")
    print(f"machine: {machine()}  ")
    print(f"load average at start (other work on the machine skews times): {load()}", flush=True)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    owned = Owned(Path(tempfile.mkdtemp(prefix="bench-shard-")))
    ok = False
    try:
        results = asyncio.run(run(owned, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    else:
        report_memory(results)
        report_time(results)
        report_checks(results)
        print(f"- load average at the end: {load()}")
        ok = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = owned.cleanup()  # idempotent; this is the one that runs on errors and Ctrl-C
        if left:
            print(f"WARNING: {len(left)} process(es) could not be stopped: {left}")
        if ok and not args.keep_logs:
            shutil.rmtree(owned.folder, ignore_errors=True)
        else:
            print(f"logs: {owned.folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
