"""What a policy does at the quiet end, in words (`autoscaler check-config` prints it).

min_shards, the buffer and policy.idle_to_zero combine into one floor; users should not have to
work out from three keys whether their fleet can sleep, and what wakes it.
Purely computational, no side effects.
"""

from __future__ import annotations

import math

from chatscale_contract.config import Config


def quiet_floor(config: Config) -> int:
    """Shards an empty fleet keeps (before idle_to_zero): min_shards, or what the buffer of free
    slots needs, whichever is more."""
    policy = config.policy
    per_shard = config.shard.max_sessions * policy.target_utilization
    return max(policy.min_shards, math.ceil(policy.buffer.slots / per_shard - 1e-9))


def explain_quiet(config: Config) -> str:
    policy = config.policy
    floor = quiet_floor(config)
    wake = (
        "the first request then wakes it: the activator holds it while a shard starts"
        if config.activator.enabled
        else "nothing would wake it (the config check refuses this)"
    )
    if policy.idle_to_zero is not None:
        return (
            f"An empty fleet keeps {floor} shard(s) (min_shards {policy.min_shards}, buffer"
            f" {policy.buffer.slots} slot(s)), and goes to zero after {policy.idle_to_zero:g} s"
            f" without any session or waiting request; {wake}."
        )
    if floor == 0:
        return (
            "min_shards 0 with buffer.slots 0: the fleet goes to zero whenever it has no session"
            f" (after scale_down.stabilization, {policy.scale_down.stabilization:g} s); {wake}."
        )
    return (
        f"The fleet never goes below {floor} shard(s) (min_shards {policy.min_shards}, buffer"
        f" {policy.buffer.slots} slot(s)); set policy.idle_to_zero to let an idle fleet sleep."
    )
