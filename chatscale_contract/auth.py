"""API keys and what each may do. Pure.

A client's key is a random string; Redis keeps only its SHA-256 (`Keys.api_keys`: hash -> the
grant, JSON), so a copy of Redis holds no usable key. A grant is `admin` (every session, key
management, a shard's admin endpoints) or `tenant`: the sessions whose id starts with `prefix`
and, when `workspace` is set, that belong to that workspace (README, "Security").

The autoscaler publishes the grants of config.yaml and the mode (`keys`, or `off` when
`auth.enabled` is false) at every start; shards and activators read them from Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass

KEYS_ON = "keys"
KEYS_OFF = "off"
FROM_CONFIG = "config"
FROM_API = "api"
FROM_SHARD_ENV = "shard.env"
GENERATED = "generated"
INTERNAL = "internal"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random key: `cs_` and 43 URL-safe characters (256 bits)."""
    return "cs_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Grant:
    name: str
    admin: bool = False
    prefix: str = ""
    """Tenant: only session ids starting with this."""
    workspace: str = ""
    """Tenant: only sessions of this workspace (empty: any)."""
    source: str = FROM_CONFIG
    """Where it came from (config, api, shard.env, generated): config's are replaced at start."""
    creates_per_minute: int = 0
    """New sessions this key may create per minute, fleet-wide (0: no limit)."""
    sends_per_minute: int = 0
    """Messages this key may send per minute, fleet-wide (0: no limit)."""
    max_sessions: int = 0
    """Sessions a tenant key's scope may hold at once (0: no cap)."""

    def may_name(self, sid: str) -> bool:
        """The session id is one this key may use at all (its prefix)."""
        return self.admin or sid.startswith(self.prefix)

    def may_see(self, sid: str, workspace: str) -> bool:
        """The key may see and act on this existing session."""
        if self.admin:
            return True
        return sid.startswith(self.prefix) and self.workspace in ("", workspace)

    def text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> Grant:
        """ValueError on anything but a grant `text` made."""
        try:
            data = json.loads(text)
            return cls(
                name=str(data["name"]),
                admin=data.get("admin") is True,
                prefix=str(data.get("prefix", "")),
                workspace=str(data.get("workspace", "")),
                source=str(data.get("source", FROM_CONFIG)),
                creates_per_minute=int(data.get("creates_per_minute", 0)),
                sends_per_minute=int(data.get("sends_per_minute", 0)),
                max_sessions=int(data.get("max_sessions", 0)),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a key grant: {exc}") from None

    def describe(self) -> str:
        if self.admin:
            return "admin"
        parts = [f"ids starting {self.prefix!r}"] if self.prefix else []
        if self.workspace:
            parts.append(f"workspace {self.workspace!r}")
        return "tenant: " + ", ".join(parts)


OPEN = Grant("keys off", admin=True, source="off")
"""The grant every request has when keys are turned off."""


@dataclass(frozen=True)
class Keyring:
    """The grants a shard or activator checks keys against (loaded from Redis)."""

    mode: str | None
    """KEYS_ON, KEYS_OFF, or None before an autoscaler published one."""
    grants: Mapping[str, Grant]
    """key hash -> grant."""
    env_key: str = ""
    """A shard's own API_KEY (its environment): an admin key, as before there were grants."""
    internal: str = ""
    """The fleet's own key (Keys.internal_key), for calls between shards."""

    @property
    def credential(self) -> str:
        """The key this shard sends on its own calls to another shard."""
        return self.internal or self.env_key

    @classmethod
    def load(
        cls, mode: str | None, entries: Mapping[str, str], env_key: str = "", internal: str = ""
    ) -> Keyring:
        grants = {}
        for digest, text in entries.items():
            try:
                grants[digest] = Grant.parse(text)
            except ValueError:
                continue  # a damaged entry grants nothing
        return cls(mode, grants, env_key, internal)

    @property
    def off(self) -> bool:
        return self.mode == KEYS_OFF

    def grant_for(self, given: str) -> Grant | None:
        """The grant of key `given`, OPEN when keys are off, None when it grants nothing."""
        if self.off:
            return OPEN
        if not given:
            return None
        if self.env_key and hmac.compare_digest(given.encode(), self.env_key.encode()):
            return Grant("API_KEY", admin=True, source=FROM_SHARD_ENV)
        return self.grants.get(key_hash(given))
