"""The publishing side of the front in one value: what is wanted, published, and served.

Purely computational, no side effects: every event (a new table, a config handed to the fronts,
every live front serving it, a failure) returns a new state, and `Front` does the I/O the state
asks for. Keeping it in one object makes the rule easy to see and to test: the ring reaches the
shards only once every live front is confirmed to serve the config it belongs to; until then
the config stays published and the fronts' reports are read again on every pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Target:
    """One routing table as a front would load it: its version, and where its shards are."""

    version: str
    endpoints: tuple[tuple[str, str], ...] = ()
    """(shard id, host:port) where each routed shard really is. nginx resolves shard names only
    when it loads a config, so a shard replaced under its name needs a reload although the
    rendered text (and the version) did not change."""

    @classmethod
    def of(cls, version: str, endpoints: Mapping[str, str]) -> Target:
        return cls(version, tuple(sorted(endpoints.items())))


@dataclass(frozen=True)
class FrontState:
    wanted: Target | None = None
    """What the fleet wants the fronts to serve now."""
    published: Target | None = None
    """The config handed to the fronts last (in Redis), served or not."""
    published_at: float = 0.0
    """When it was handed over (monotonic seconds)."""
    generation: str = ""
    """The generation handed over (fronts.generation: its rendered text and its endpoints)."""
    applied: Target | None = None
    """What every live front was confirmed to serve, and the ring the shards were told."""
    retry_at: float = 0.0
    """No new attempt to publish before this (monotonic seconds), after a failure."""
    error: str = ""
    """What is wrong now: a failed render or write, fronts that refuse or lag; empty if none."""

    def want(self, target: Target) -> FrontState:
        return self if target == self.wanted else replace(self, wanted=target)

    @property
    def to_publish(self) -> bool:
        """The fronts have not been handed what is wanted."""
        return self.wanted is not None and self.wanted != self.published

    @property
    def awaiting(self) -> bool:
        """A config was handed over, and not every live front was seen serving it yet."""
        return self.published is not None and self.published != self.applied

    def may_publish(self, now: float) -> bool:
        return self.to_publish and now >= self.retry_at

    def handed_over(self, now: float, generation: str) -> FrontState:
        return replace(
            self, published=self.wanted, published_at=now, generation=generation, error=""
        )

    def served(self) -> FrontState:
        """Every live front serves the published config, and the ring was published."""
        return replace(self, applied=self.published, error="")

    def waiting(self, problem: str) -> FrontState:
        """Not served yet; `problem` says why, once it is worth reporting."""
        return replace(self, error=problem)

    def failed(self, error: str, retry_at: float) -> FrontState:
        """Rendering, handing over or publishing the ring failed; try again at `retry_at`."""
        return replace(self, error=error, retry_at=retry_at)
