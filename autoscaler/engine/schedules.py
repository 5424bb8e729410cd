"""Which scheduled windows are open at a moment. Purely computational, no side effects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from chatscale_contract.config import CRON_CHECK, Schedule


@lru_cache(maxsize=256)
def _trigger(cron: str, timezone: str) -> CronTrigger:
    return CronTrigger.from_crontab(cron, timezone=ZoneInfo(timezone))


def check_cron(expr: str) -> None:
    """Raise ValueError unless APScheduler (which runs the schedules) accepts `expr`."""
    try:
        CronTrigger.from_crontab(expr)
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from exc


VALIDATION = {CRON_CHECK: check_cron}
"""The validation context the autoscaler loads config.yaml with (see configload)."""


def is_open(schedule: Schedule, now: float) -> bool:
    """True if a window of `schedule` started at most `duration` seconds before `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    earliest = moment - timedelta(seconds=schedule.duration)
    # The first fire time at or after `earliest`; the window is open if that start is not
    # in the future. This looks back exactly one duration, however long the cron period is.
    start = _trigger(schedule.cron, schedule.timezone).get_next_fire_time(None, earliest)
    return start is not None and start <= moment


def raised_floor(min_shards: int, schedules: tuple[Schedule, ...], now: float) -> tuple[int, str]:
    """The effective minimum shard count, and which schedule raised it ("" if none)."""
    floor, why = min_shards, ""
    for schedule in schedules:
        if schedule.min_shards > floor and is_open(schedule, now):
            floor, why = schedule.min_shards, schedule.name
    return floor, why
