"""The nginx front's state in one value: what nginx serves, what is wanted, what is owed.

Purely computational, no side effects: every event (a new table, an apply that worked, one that
failed) returns a new state, and `Front` does the I/O the state asks for. Keeping it in one
object is what makes one rule easy to see and to test: the ring reaches the shards only after
nginx has been *confirmed* to serve it, and a failed confirmation leaves a debt that the next
attempt pays (reload and confirm again) before anything is published.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Target:
    """One routing table as nginx would load it: its version, and where its shards are."""

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
    applied: Target | None = None
    """What nginx is confirmed to serve, and the ring the shards were told. None at start."""
    wanted: Target | None = None
    """What the fleet wants nginx to serve now."""
    owed: bool = False
    """The last attempt failed after it may have changed the live file (a reload or its
    confirmation failed), so the next one must reload and confirm even an unchanged text."""
    retry_at: float = 0.0
    """No new attempt before this (monotonic seconds), after a failure."""
    error: str = ""
    """Why the last attempt failed; empty after a success."""

    def want(self, target: Target) -> FrontState:
        return self if target == self.wanted else replace(self, wanted=target)

    @property
    def in_step(self) -> bool:
        """nginx serves what is wanted and nothing is owed: nothing to do."""
        return self.wanted == self.applied and not self.owed

    @property
    def force(self) -> bool:
        """Reload even if the rendered text equals the live file: a reload or confirmation is
        owed, or the same table now points at shards that moved."""
        same_table = (
            self.applied is not None
            and self.wanted is not None
            and self.applied.version == self.wanted.version
        )
        return self.owed or same_table

    def due(self, now: float) -> bool:
        """An attempt is needed and allowed now (the debouncer decides the rest)."""
        return not self.in_step and now >= self.retry_at

    def succeeded(self) -> FrontState:
        """nginx confirmed the wanted table and the ring was published."""
        return FrontState(applied=self.wanted, wanted=self.wanted)

    def failed(self, error: str, retry_at: float) -> FrontState:
        """Rendering, validating, installing, reloading, confirming or publishing failed."""
        return replace(self, owed=True, retry_at=retry_at, error=error)
