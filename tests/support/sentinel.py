"""A Redis primary, a replica and three sentinels on loopback, owned by one test (all stopped at
the end, also when the test fails). With `aof`, both servers keep an append-only file synced on
every write, so a server SIGKILLed and started again comes back with everything it answered."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from support.procs import free_port, require_binary, start, stop, wait_for

SERVICE = "chatscale"


@dataclass
class SentinelSet:
    folder: Path
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: tuple[int, ...] = field(
        default_factory=lambda: tuple(free_port() for _ in range(3))
    )
    aof: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary(self) -> int:
        """The port of the primary the sentinels name now."""
        client = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        client.close()
        return int(port)

    def kill_primary(self) -> int:
        """SIGKILL the current primary (as a crash); returns its port."""
        port = self.primary()
        name = "primary" if port == self.primary_port else "replica"
        self.procs[name].kill()
        self.procs[name].wait(10)
        return port

    def restart_servers(self, down_for: float) -> None:
        """SIGKILL both servers, leave Redis down for `down_for` seconds, then start them again
        from their files: the primary first (so it is still the one the sentinels name), then
        the other as its replica."""
        primary = self.primary()
        for proc in (self.procs["primary"], self.procs["replica"]):
            proc.kill()
            proc.wait(10)
        time.sleep(down_for)
        for name, port in (("primary", self.primary_port), ("replica", self.replica_port)):
            follow = () if port == primary else ("--replicaof", "127.0.0.1", str(primary))
            self._server(name, port, *follow)

    def start_again(self, port: int) -> None:
        """Start the server on `port` again (after kill_primary), as a replica of the primary."""
        name = "primary" if port == self.primary_port else "replica"
        self._server(name, port, "--replicaof", "127.0.0.1", str(self.primary()))

    def _server(self, name: str, port: int, *extra: str) -> None:
        argv = [require_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else []
        argv += ["--save", "", "--appendonly", "no", *persist, "--dir", str(self.folder / name)]
        (self.folder / name).mkdir(exist_ok=True)
        self.procs[name] = start(argv + list(extra), self.folder / f"{name}.log")
        wait_for(lambda: _pings(port), 30, f"redis {name} on {port}")

    def _sentinel(self, n: int, port: int) -> None:
        conf = self.folder / f"sentinel-{n}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        argv = [require_binary("redis-server"), str(conf), "--sentinel"]
        self.procs[f"sentinel-{n}"] = start(argv, self.folder / f"sentinel-{n}.log")
        wait_for(lambda: _pings(port), 10, f"sentinel {n} on {port}")


def _pings(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    return False


@contextlib.contextmanager
def sentinel_set(folder: Path, aof: bool = False) -> Iterator[SentinelSet]:
    folder.mkdir(parents=True, exist_ok=True)
    found = SentinelSet(folder, aof=aof)
    try:
        found._server("primary", found.primary_port)
        found._server(
            "replica", found.replica_port, "--replicaof", "127.0.0.1", str(found.primary_port)
        )
        for n, port in enumerate(found.sentinel_ports):
            found._sentinel(n, port)
        yield found
    finally:
        for proc in found.procs.values():
            stop(proc)
