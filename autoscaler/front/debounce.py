"""When a pending nginx change is due: batches bursts of fleet changes into one reload.

Purely computational, no side effects: the clock is injected, so tests drive it without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

from chatscale_contract.config import ReloadSettings


class Debouncer:
    """When a pending nginx change is due: batches bursts, bounds the wait.

    Never sooner than `min_interval` after the last apply; otherwise due once changes have been
    quiet for `min_interval`, or once the oldest pending change has waited `max_delay`.
    """

    def __init__(self, min_interval: float, max_delay: float, clock: Callable[[], float]) -> None:
        self.min_interval = min_interval
        self.max_delay = max_delay
        self.clock = clock
        self._first: float | None = None
        self._last_change = 0.0
        self._last_apply: float | None = None

    @classmethod
    def from_settings(cls, settings: ReloadSettings, clock: Callable[[], float]) -> Debouncer:
        return cls(settings.min_interval, settings.max_delay, clock)

    @property
    def pending(self) -> bool:
        return self._first is not None

    def changed(self) -> None:
        """Record that the desired config changed."""
        now = self.clock()
        if self._first is None:
            self._first = now
        self._last_change = now

    def applied(self) -> None:
        """Record that the pending changes were applied (successfully or not)."""
        self._first = None
        self._last_apply = self.clock()

    def wait(self) -> float | None:
        """Seconds until the pending change is due (0 when due now); None if nothing pends."""
        if self._first is None:
            return None
        settled = min(self._last_change + self.min_interval, self._first + self.max_delay)
        earliest = settled
        if self._last_apply is not None:
            earliest = max(settled, self._last_apply + self.min_interval)
        return max(0.0, earliest - self.clock())

    def due(self) -> bool:
        return self.wait() == 0.0
