"""Publishing the API keys of config.yaml to Redis, where shards and activators read them
(chatscale_contract.auth), and the first start's generated key when config names none."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from chatscale_contract.auth import (
    FROM_CONFIG,
    FROM_SHARD_ENV,
    GENERATED,
    INTERNAL,
    KEYS_OFF,
    KEYS_ON,
    Grant,
    key_hash,
    new_key,
)
from chatscale_contract.config import Config
from chatscale_contract.keys import Keys

log = logging.getLogger(__name__)


def config_grants(config: Config) -> dict[str, Grant]:
    """key hash -> grant, for the keys config.yaml names (and the shards' own API_KEY)."""
    grants = {}
    for item in config.auth.keys:
        digest = item.sha256 or key_hash(item.key or "")
        grants[digest] = Grant(
            item.name,
            item.scope == "admin",
            item.prefix,
            item.workspace,
            FROM_CONFIG,
            item.creates_per_minute,
            item.sends_per_minute,
            item.max_sessions,
        )
    env_key = config.shard.env.get("API_KEY")
    if env_key:
        grants[key_hash(env_key)] = Grant("API_KEY", admin=True, source=FROM_SHARD_ENV)
    return grants


async def publish(client: aioredis.Redis, keys: Keys, config: Config) -> str | None:
    """Make Redis hold config's keys and mode (config's earlier keys that are gone are
    removed; keys made through the API stay). Returns a key generated now, for the log."""
    wanted = config_grants(config)
    existing: dict[str, str] = await client.hgetall(keys.api_keys)
    stale = [d for d, text in existing.items() if d not in wanted and _from_config(text)]
    async with client.pipeline(transaction=True) as pipe:
        if stale:
            pipe.hdel(keys.api_keys, *stale)
        if wanted:
            pipe.hset(keys.api_keys, mapping={d: g.text() for d, g in wanted.items()})
        pipe.set(keys.auth_mode, KEYS_ON if config.auth.enabled else KEYS_OFF)
        await pipe.execute()
    await _internal(client, keys)
    if not config.auth.enabled:
        log.warning(
            "auth.enabled is false: the front takes requests without a key; anyone who reaches"
            " it may open sessions, read their QR codes and send messages"
        )
        return None
    kept = [t for d, t in existing.items() if d not in stale] + [g.text() for g in wanted.values()]
    if any(_admin(text, people_only=True) for text in kept):
        return None
    return await _generate(client, keys)


async def _generate(client: aioredis.Redis, keys: Keys) -> str | None:
    """An admin key for a fleet that has none; one per fleet even when autoscalers race."""
    key = new_key()
    made = bool(await client.set(keys.generated_key, key, nx=True))
    if not made:
        key = await client.get(keys.generated_key) or key
    grant = Grant("generated", admin=True, source=GENERATED)
    await client.hset(keys.api_keys, key_hash(key), grant.text())
    if made:
        log.warning(
            "no API key is configured: generated the admin key %s (shown once here and on the"
            " status page); clients send it as X-Api-Key. Configure keys under auth.keys.",
            key,
        )
    return key if made else None


async def _internal(client: aioredis.Redis, keys: Keys) -> None:
    """The fleet's own admin key, for the shards' calls to each other; made once per fleet."""
    await client.set(keys.internal_key, new_key(), nx=True)
    key = await client.get(keys.internal_key)
    if key:
        grant = Grant("internal", admin=True, source=INTERNAL)
        await client.hset(keys.api_keys, key_hash(key), grant.text())


def _from_config(text: str) -> bool:
    try:
        return Grant.parse(text).source in (FROM_CONFIG, FROM_SHARD_ENV)
    except ValueError:
        return True  # damaged: replaced by what config says


def _admin(text: str, people_only: bool = False) -> bool:
    """An admin grant (with `people_only`, not the fleet's internal one)."""
    try:
        grant = Grant.parse(text)
    except ValueError:
        return False
    return grant.admin and not (people_only and grant.source == INTERNAL)
