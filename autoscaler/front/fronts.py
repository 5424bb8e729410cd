"""What the fronts report, and whether they all serve a config yet.

Every nginx front has an agent beside it (`agent.py`) that applies the config the autoscaler
publishes in Redis and reports, every interval, which *generation* its nginx serves. A
generation names the rendered text *and* where its shards are: the same text after a shard
moved (same name, new address) is a new generation, so every front reloads and resolves the name
again; and new text for the same table (other nginx settings, a new template) is one too.
Purely computational, no side effects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def generation(text: str, endpoints: Iterable[tuple[str, str]]) -> str:
    """The generation of config `text` with its shards at `endpoints` ((shard, host:port))."""
    digest = hashlib.sha256(text.encode())
    for shard, addr in sorted(endpoints):
        digest.update(f"\n{shard} {addr}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class FrontReport:
    """One front's report, as its agent writes it (`Keys.front`)."""

    id: str
    node: str
    generation: str
    """The generation its nginx is confirmed to serve ("" before the first)."""
    version: str
    """The routing-table version of that generation (what nginx answers at /__chatscale/config)."""
    ts: float
    error: str = ""
    """Why the last attempt to apply `error_generation` failed; empty when it did not."""
    error_generation: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> FrontReport:
        return cls(
            id=raw["id"],
            node=raw.get("node", ""),
            generation=raw.get("generation", ""),
            version=raw.get("version", ""),
            ts=float(raw.get("ts", 0)),
            error=raw.get("error", ""),
            error_generation=raw.get("error_generation", ""),
        )

    def fields(self) -> dict[str, str]:
        return {
            "id": self.id,
            "node": self.node,
            "generation": self.generation,
            "version": self.version,
            "ts": repr(self.ts),
            "error": self.error,
            "error_generation": self.error_generation,
        }


@dataclass(frozen=True)
class Verdict:
    served: bool
    """Every live front serves the generation (true also when no front is live)."""
    live: tuple[str, ...]
    lagging: tuple[str, ...] = ()
    """Live fronts that do not serve it yet."""
    problem: str = ""
    """What to report: fronts that refused the config, or lag past the bound; else empty."""


def judge(
    reports: Iterable[FrontReport],
    wanted: str,
    now: float,
    waited: float,
    front_timeout: float,
    lag_bound: float,
) -> Verdict:
    """Do all live fronts serve generation `wanted`, published `waited` seconds ago?

    A front whose last report is older than `front_timeout` is not live and is not waited for
    (a dead node's front must not hold the fleet back). A front that could not apply this
    generation (nginx -t refused it, or its nginx did not confirm it) is reported at once; one
    that merely has not caught up only after `lag_bound` seconds.
    """
    live = sorted((r for r in reports if now - r.ts <= front_timeout), key=lambda r: r.id)
    lagging = [r for r in live if r.generation != wanted]
    refused = [r for r in lagging if r.error and r.error_generation == wanted]
    ids = tuple(r.id for r in live)
    if not lagging:
        return Verdict(True, ids)
    if refused:
        problem = "; ".join(f"front {r.id} could not apply the config: {r.error}" for r in refused)
    elif waited > lag_bound:
        problem = "; ".join(
            f"front {r.id} lags: serves {r.generation or 'nothing'}, not {wanted},"
            f" {waited:.0f} s after it was published"
            for r in lagging
        )
    else:
        problem = ""
    return Verdict(False, ids, tuple(r.id for r in lagging), problem)
