"""Shard settings, read from the environment (the autoscaler's runtimes set them per shard).

If `CHATSCALE_CONFIG` points at the shared config.yaml, its values are the defaults (Redis, key
prefix, capacity, heartbeat, watermark); explicit environment variables win.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from chatscale_contract.config import Config
from chatscale_contract.configload import ConfigError, load_config
from chatscale_contract.ids import shard_number

T = TypeVar("T")
DEBIAN_CHROMIUM = "/usr/lib/chromium/chromium"


class SettingsError(ValueError):
    """An environment variable has a bad value; the message names every one."""


@dataclass(frozen=True)
class ShardSettings:
    shard_id: str
    """SHARD_ID: `shard-<n>`; reused when a dead shard is replaced, so its sessions come back."""
    host: str = "0.0.0.0"
    """HOST: address to listen on."""
    port: int = 8000
    """PORT: port to listen on."""
    addr: str = ""
    """SHARD_ADDR: host:port other shards and nginx use to reach this one (default host:port)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """REDIS_URL."""
    key_prefix: str = "cs:"
    """KEY_PREFIX: prefix of every Redis key (must match the autoscaler's)."""
    max_sessions: int = 50
    """MAX_SESSIONS: sessions this shard holds at most."""
    api_key: str = ""
    """API_KEY: required in X-Api-Key when set."""
    browser_executable: str = ""
    """BROWSER_EXECUTABLE: Chromium binary (default: the system chromium)."""
    headless: bool = True
    """HEADLESS: run Chromium headless (0 to watch it on a display)."""
    heartbeat_interval: float = 5.0
    """HEARTBEAT_INTERVAL: seconds between heartbeats."""
    heartbeat_timeout: float = 20.0
    """HEARTBEAT_TIMEOUT: heartbeat TTL; also this shard's lease on its sessions."""
    snapshot_interval: float = 300.0
    """SNAPSHOT_INTERVAL: seconds between auth-state snapshots of a working session."""
    memory_high_watermark: float = 0.85
    """MEMORY_HIGH_WATERMARK: fraction of the memory limit at which the shard reports full."""
    stop_timeout: float = 60.0
    """STOP_TIMEOUT: seconds a drain on SIGTERM may take before the shard exits anyway."""
    restore_concurrency: int = 4
    """RESTORE_CONCURRENCY: sessions opened at once when restoring; default twice the CPUs the
    shard may use (opening a page is CPU-bound in Chromium, with waits on the driver between)."""
    handoff_wait: float = 30.0
    """HANDOFF_WAIT: seconds a request for a session moving between shards is held until it
    opens again (shard/handoff.py); 0 refuses it at once (409), as before."""
    whatsapp_url: str = "https://web.whatsapp.com"
    """WHATSAPP_URL: where the whatsapp driver goes (tests point it at a local stand-in)."""
    whatsapp_selectors: Mapping[str, str] = field(default_factory=dict)
    """WHATSAPP_SELECTORS: JSON object overriding the whatsapp driver's selectors."""
    egress_allow: str = "web.whatsapp.com,*.whatsapp.com,*.whatsapp.net"
    """EGRESS_ALLOW: hosts the browsers may reach, comma-separated (shard/egress.py)."""
    egress_guard: bool = True
    """EGRESS_GUARD: 0 lets the browsers reach anything (a development machine only)."""
    page_memory_limit_mb: int = 0
    """PAGE_MEMORY_LIMIT_MB: a page whose JS heap, Blink objects and array buffers pass this is
    closed and reopened from its last snapshot (shard/pagememory.py). 0: off, the default: a
    page's normal size depends on the site and the account, and a bound below it would reopen
    it forever."""
    page_memory_interval: float = 15.0
    """PAGE_MEMORY_INTERVAL: seconds between two measurements of every page."""
    version: str = "0.1.0"

    @property
    def public_addr(self) -> str:
        return self.addr or f"{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}"


def from_env(env: Mapping[str, str] | None = None) -> ShardSettings:
    """Build settings from the environment; raises SettingsError naming every bad variable."""
    env = os.environ if env is None else env
    errors: list[str] = []
    base = _shared_config(env, errors)

    def get(name: str, parse: Callable[[str], T], default: T) -> T:
        if name not in env:
            return default
        try:
            return parse(env[name])
        except ValueError as exc:
            errors.append(f"{name}={env[name]!r}: {exc}")
            return default

    settings = ShardSettings(
        shard_id=get("SHARD_ID", _shard_id, "shard-1"),
        host=env.get("HOST", "0.0.0.0"),
        port=get("PORT", _port, 8000),
        addr=env.get("SHARD_ADDR", ""),
        redis_url=env.get("REDIS_URL", base.redis.url),
        key_prefix=env.get("KEY_PREFIX", base.redis.key_prefix),
        max_sessions=get("MAX_SESSIONS", _positive_int, base.shard.max_sessions),
        api_key=env.get("API_KEY", ""),
        browser_executable=env.get("BROWSER_EXECUTABLE", "") or _system_chromium(),
        headless=get("HEADLESS", _bool, True),
        heartbeat_interval=get("HEARTBEAT_INTERVAL", _positive, base.heartbeat.interval),
        heartbeat_timeout=get("HEARTBEAT_TIMEOUT", _positive, base.heartbeat.timeout),
        snapshot_interval=get("SNAPSHOT_INTERVAL", _positive, 300.0),
        memory_high_watermark=get(
            "MEMORY_HIGH_WATERMARK", _fraction, base.policy.memory_high_watermark
        ),
        stop_timeout=get("STOP_TIMEOUT", _positive, float(base.shard.stop_timeout)),
        restore_concurrency=get("RESTORE_CONCURRENCY", _positive_int, 2 * available_cpus()),
        handoff_wait=get("HANDOFF_WAIT", _non_negative, 30.0),
        whatsapp_url=env.get("WHATSAPP_URL", "https://web.whatsapp.com").rstrip("/"),
        whatsapp_selectors=get("WHATSAPP_SELECTORS", _json_object, {}),
        egress_allow=env.get("EGRESS_ALLOW", ",".join(base.shard.egress_allow)),
        egress_guard=get("EGRESS_GUARD", _bool, True),
        page_memory_limit_mb=get("PAGE_MEMORY_LIMIT_MB", _non_negative_int, 0),
        page_memory_interval=get("PAGE_MEMORY_INTERVAL", _positive, 15.0),
    )
    if settings.heartbeat_timeout <= 2 * settings.heartbeat_interval:
        errors.append("HEARTBEAT_TIMEOUT must be more than twice HEARTBEAT_INTERVAL")
    if errors:
        raise SettingsError("; ".join(errors))
    return settings


def _shared_config(env: Mapping[str, str], errors: list[str]) -> Config:
    path = env.get("CHATSCALE_CONFIG")
    if not path:
        return Config()
    try:
        return load_config(path, env={})
    except (ValueError, ConfigError) as exc:
        errors.append(f"CHATSCALE_CONFIG={path!r}: {exc}")
        return Config()


def available_cpus() -> int:
    """The CPUs this process may use: a container's CPU quota (cgroup v2 or v1) if it sets
    one, else the CPUs it may run on. At least 1."""
    quota = cgroup_cpus()
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(cpus, quota) if quota else cpus)


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """ceil(quota / period) of the container's CPU limit (cgroup v2, else v1); 0 when none."""
    for quota_file, period_file in (
        (root / "cpu.max", None),
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
    ):
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return 0
        return max(1, -(-int(quota) // int(period)))
    return 0


def _system_chromium() -> str:
    # Debian's /usr/bin/chromium is a shell wrapper that adds desktop flags and forks a shell
    # per launch; the binary behind it is what a headless service wants.
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium"


def _shard_id(text: str) -> str:
    shard_number(text)
    return text


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be a port number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be a number, 0 or more")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be a fraction in (0, 1]")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _json_object(text: str) -> dict[str, str]:
    value = json.loads(text)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("must be a JSON object of strings")
    return {str(k): v for k, v in value.items()}
