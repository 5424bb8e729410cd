"""The nudger: a burst of nudges is one pass, and a nudge during a pass is never lost.
(APScheduler stands behind a small stand-in with the one method the nudger uses.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from autoscaler.service import PASS_JOB, Nudger


class Job:
    """APScheduler's job as the nudger sees it: a planned next run it may move."""

    def __init__(self) -> None:
        self.next_run_time: datetime | None = datetime.now(UTC) + timedelta(seconds=2)
        self.moves: list[datetime] = []

    def modify(self, next_run_time: datetime) -> None:
        self.next_run_time = next_run_time
        self.moves.append(next_run_time)


class Scheduler:
    def __init__(self) -> None:
        self.job = Job()

    def get_job(self, job_id: str) -> Job | None:
        return self.job if job_id == PASS_JOB else None


class Daemon:
    """Stands in for the daemon: its pass is where a nudge arrives."""

    def __init__(self, nudge: Nudger) -> None:
        self.nudge = nudge
        self.passes = 0

    async def reconcile(self) -> None:
        self.passes += 1
        if self.passes == 1:
            self.nudge()  # e.g. a front confirms the config this very pass handed over

    def follow_up(self) -> float | None:
        return 2.0 if self.passes == 3 else None


async def test_a_nudge_during_a_pass_runs_another_pass_right_after_it() -> None:
    scheduler = Scheduler()
    nudger = Nudger(scheduler)
    daemon = Daemon(nudger)
    await nudger.pass_of(daemon)
    assert daemon.passes == 2, "the nudge that came during the pass got a pass of its own"
    assert scheduler.job.moves == [], "in the same job: no run asked for that could be skipped"


def test_a_burst_makes_one_run_and_never_postpones_one() -> None:
    scheduler = Scheduler()
    nudger = Nudger(scheduler)
    for _ in range(20):
        nudger()
    assert len(scheduler.job.moves) == 1, "one run for the burst"
    soon = scheduler.job.moves[0]
    assert soon <= datetime.now(UTC)
    nudger(delay=8.0)  # a follow-up later than what is planned changes nothing
    assert scheduler.job.next_run_time == soon


async def test_work_left_waiting_gets_a_run_when_it_falls_due() -> None:
    scheduler = Scheduler()
    scheduler.job.next_run_time = datetime.now(UTC) + timedelta(seconds=30)
    nudger = Nudger(scheduler)
    daemon = Daemon(nudger)
    daemon.passes = 2
    before = datetime.now(UTC)
    await nudger.pass_of(daemon)  # the third pass leaves a batch due in 2 s
    (run,) = scheduler.job.moves
    assert 1.9 <= (run - before).total_seconds() <= 2.6


class SlowDaemon:
    async def reconcile(self) -> None:
        await asyncio.sleep(0.2)

    def follow_up(self) -> float | None:
        return None


async def test_passes_are_spaced_by_twice_the_last_one() -> None:
    scheduler = Scheduler()
    nudger = Nudger(scheduler)
    assert nudger.spacing == Nudger.MIN_SPACING  # a quick fleet: a nudge waits 0.1 s at most
    await nudger.pass_of(SlowDaemon())
    assert 0.4 <= nudger.spacing < 0.6
    ended = datetime.now(UTC)
    nudger()  # right after a 0.2 s pass: not before 0.4 s after its start
    (run,) = scheduler.job.moves
    assert 0.15 <= (run - ended).total_seconds() <= 0.25
