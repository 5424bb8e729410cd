"""The reload Debouncer (pure), driven by a fake clock."""

from __future__ import annotations

import pytest

from autoscaler.front.debounce import Debouncer
from chatscale_contract.config import ReloadSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_debouncer_batches_a_burst() -> None:
    clock = FakeClock()
    debounce = Debouncer(min_interval=1.0, max_delay=5.0, clock=clock)
    assert debounce.wait() is None and not debounce.due()
    debounce.changed()
    assert debounce.wait() == 1.0
    for _ in range(3):  # a change every 0.5 s keeps postponing the apply
        clock.now += 0.5
        debounce.changed()
        assert not debounce.due()
    clock.now += 1.0
    assert debounce.due()
    debounce.applied()
    assert not debounce.pending and debounce.wait() is None


def test_debouncer_bounds_the_wait_by_max_delay() -> None:
    clock = FakeClock()
    debounce = Debouncer(min_interval=1.0, max_delay=3.0, clock=clock)
    debounce.changed()
    for _ in range(5):  # never quiet for a whole second
        clock.now += 0.6
        debounce.changed()
    assert clock.now - 1000.0 == pytest.approx(3.0)
    assert debounce.due()


def test_debouncer_keeps_min_interval_after_an_apply() -> None:
    clock = FakeClock()
    debounce = Debouncer.from_settings(ReloadSettings(min_interval=2.0, max_delay=0.0), clock)
    debounce.changed()
    assert debounce.due()  # max_delay 0: apply at once, nothing applied recently
    debounce.applied()
    clock.now += 0.5
    debounce.changed()
    assert debounce.wait() == pytest.approx(1.5)
    clock.now += 1.5
    assert debounce.due()
