"""The autoscaler publishes config.yaml's keys to Redis (real Redis): a first start with none
generates one admin key per fleet and logs it once; config's keys replace the ones it named
before, keys made through the API stay; `auth.enabled: false` is published and warned about.
The activator's gate reads the same keys."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from autoscaler.activator.gate import Gate
from autoscaler.loop.auth import publish
from chatscale_contract.auth import FROM_API, KEYS_OFF, KEYS_ON, Grant, Keyring, key_hash
from chatscale_contract.config import Config
from chatscale_contract.keys import Keys

KEYS = Keys("cs:")


def config(**auth: Any) -> Config:
    return Config.model_validate({"auth": auth})


async def grants(client: aioredis.Redis) -> dict[str, Grant]:
    """The grants for people (without the fleet's internal one, checked on its own)."""
    entries = await client.hgetall(KEYS.api_keys)
    parsed = {d: Grant.parse(t) for d, t in entries.items()}
    return {d: g for d, g in parsed.items() if g.source != "internal"}


async def test_a_first_start_without_keys_generates_one_admin_key(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        key = await publish(aredis, KEYS, config())
        again = await publish(aredis, KEYS, config())  # a second autoscaler, or a restart
    assert key is not None and key.startswith("cs_") and again is None
    assert [r.getMessage().count(key) for r in caplog.records] == [1], "logged once"
    assert await aredis.get(KEYS.generated_key) == key
    assert await aredis.get(KEYS.auth_mode) == KEYS_ON
    (grant,) = (await grants(aredis)).values()
    assert grant.admin and grant.source == "generated"
    keyring = Keyring.load(KEYS_ON, await aredis.hgetall(KEYS.api_keys))
    assert keyring.grant_for(key) == grant and keyring.grant_for("cs_guess") is None
    internal = await aredis.get(KEYS.internal_key)
    assert internal and internal != key, "the shards' own key, one per fleet"
    assert keyring.grant_for(internal) == Grant("internal", admin=True, source="internal")


async def test_configs_keys_replace_its_earlier_ones_and_api_keys_stay(
    aredis: aioredis.Redis,
) -> None:
    made_by_api = Grant("api-made", prefix="z-", source=FROM_API)
    await aredis.hset(KEYS.api_keys, key_hash("api-key-0123456789"), made_by_api.text())
    first = config(
        keys=[
            {"name": "ops", "key": "ops-key-0123456789", "scope": "admin"},
            {"name": "acme", "sha256": key_hash("acme-key-0123456789"), "prefix": "acme-"},
        ]
    )
    assert await publish(aredis, KEYS, first) is None, "an admin key is configured"
    names = sorted(g.name for g in (await grants(aredis)).values())
    assert names == ["acme", "api-made", "ops"]
    second = config(keys=[{"name": "ops", "key": "ops-key-0123456789", "scope": "admin"}])
    await publish(aredis, KEYS, second)
    assert sorted(g.name for g in (await grants(aredis)).values()) == ["api-made", "ops"]
    assert await aredis.get(KEYS.generated_key) is None


async def test_keys_off_is_published_and_warned_about(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert await publish(aredis, KEYS, config(enabled=False)) is None
    assert await aredis.get(KEYS.auth_mode) == KEYS_OFF
    assert any("auth.enabled is false" in r.getMessage() for r in caplog.records)
    assert await aredis.get(KEYS.generated_key) is None


async def test_the_activator_holds_only_requests_with_a_key(aredis: aioredis.Redis) -> None:
    gate = Gate(aredis, KEYS, env_key="shard-env-key-0123")
    assert await gate.admits(""), "nothing published yet: the shard decides"
    ops = {"name": "ops", "key": "ops-key-0123456789", "scope": "admin"}
    await publish(aredis, KEYS, config(keys=[ops]))
    gate = Gate(aredis, KEYS, env_key="shard-env-key-0123")
    assert await gate.admits("ops-key-0123456789")
    assert await gate.admits("shard-env-key-0123")
    assert not await gate.admits("") and not await gate.admits("ops-key-0123456780")


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="give one of key or sha256"):
        config(keys=[{"name": "a"}])
    with pytest.raises(ValueError, match="needs a prefix or a workspace"):
        config(keys=[{"name": "a", "key": "a-key-0123456789"}])
    with pytest.raises(ValueError, match="names must be unique"):
        one = {"name": "a", "key": "a-key-0123456789", "scope": "admin"}
        config(keys=[one, one])
