"""Where Redis is: a plain URL (`redis://host:6379/0`), or Redis Sentinel
(`redis+sentinel://[user:password@]host1:26379,host2:26379,host3:26379/<service>[/db]`),
whose sentinels name the current primary of `service` and a new one after a failover. Pure;
each side connects with its own client (autoscaler/redisconn.py, shard/redisconn.py)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    url: str = ""
    """A plain redis:// or rediss:// URL; empty for Sentinel."""
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    """The primary's name the sentinels monitor (`sentinel monitor <service> ...`)."""
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)


def parse_redis_url(url: str) -> RedisTarget:
    """ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        return RedisTarget(url=url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"{url!r}: use redis://, rediss://, unix:// or {SENTINEL_SCHEME}://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    sentinels = tuple(_host(h) for h in hosts.split(",") if h)
    if not sentinels:
        raise ValueError(f"{url!r}: name at least one sentinel (host:port)")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(f"{url!r}: the path is /<service name>[/<db>]")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"{url!r}: the database is a number, not {path[1]!r}")
    return RedisTarget(
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _host(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(SENTINEL_PORT))
    if not port.isdigit():
        raise ValueError(f"sentinel {text!r}: the port is a number")
    return host, int(port)
