"""Real nginx and real upstream HTTP servers, owned by the tests.

`upstreams` is one child process serving one port per fake shard (tests/nginx/upstream_server.py);
each answers with its shard id. `front` is a private nginx (`nginx -c <file> -g 'daemon off;'`)
whose config, pid file, logs and temp folders all live in one throw-away folder, driven through
the real renderer and NginxApplier with the LocalReloader, exactly as the daemon drives it.

Running as root, nginx workers run as `nobody`: the folder is made world-readable (0755) instead
of rendering a `user` line, so the rendered config stays the production one.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.frontkit import (
    SHARDS,
    UPSTREAM_SERVER,
    Front,
    NoReload,
    Upstreams,
    nginx_folder,
    nginx_settings,
)
from support.procs import free_port, port_open, start, stop, wait_for

from autoscaler.front.apply import NginxApplier
from autoscaler.front.reload import LocalReloader
from autoscaler.front.table import RouteTable


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    addrs = {f"shard-{n}": f"127.0.0.1:{free_port()}" for n in range(1, SHARDS + 1)}
    log = tmp_path_factory.mktemp("upstreams") / "upstreams.log"
    argv = [sys.executable, str(UPSTREAM_SERVER), *(f"{s}={a}" for s, a in addrs.items())]
    proc = start(argv, log)
    ports = [int(a.rsplit(":", 1)[1]) for a in addrs.values()]
    try:
        wait_for(lambda: all(port_open(p) for p in ports), 20, f"upstream helper (log: {log})")
        yield Upstreams(addrs)
    finally:
        stop(proc)


@pytest.fixture
def free_addr() -> str:
    """host:port where nothing listens (a shard that died)."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def nginx_dir() -> Iterator[Path]:
    with nginx_folder() as folder:
        yield folder


@pytest.fixture
async def front(nginx_dir: Path) -> AsyncIterator[Front]:
    """nginx serving an empty table (every request 503) until a test serves another one."""
    settings = nginx_settings(nginx_dir)
    url = f"http://127.0.0.1:{settings.listen}"
    first = RouteTable(())
    applier = NginxApplier(settings, NoReload(), confirm_url=url, confirm_timeout=10)
    handle = Front(settings, applier, url, nginx_dir)
    result = await applier.apply(handle.render(first))
    assert result.ok, result.error
    argv = [settings.binary, "-e", "stderr", "-c", settings.config_path, "-g", "daemon off;"]
    proc = start(argv, nginx_dir / "nginx.out")
    try:
        wait_for(lambda: port_open(settings.listen), 10, f"nginx (see {nginx_dir}/nginx.out)")
        wait_for(lambda: Path(settings.pid_path).exists(), 10, "nginx pid file")
        applier.reloader = LocalReloader(settings)
        handle.served = first
        yield handle
    finally:
        stop(proc)
        assert proc.returncode is not None
        _report_nginx_problems(handle)


def _report_nginx_problems(front: Front) -> None:
    # Alerts in the error log (a worker crash, a failed reload) fail the test that caused them.
    bad = [line for line in front.error_log().splitlines() if "[alert]" in line or "[crit]" in line]
    assert not bad, "nginx logged:\n" + "\n".join(bad)
