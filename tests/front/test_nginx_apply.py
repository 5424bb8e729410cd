"""Installing configs into a real nginx: what nginx -t accepts, and that nothing bad ever replaces
the last good config (on disk or in service)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from support.frontkit import TEMPLATES, Front, Upstreams, nginx_settings, shard_for
from support.procs import port_open, wait_for

from autoscaler.front.apply import NginxApplier, confirm
from autoscaler.front.reload import (
    LocalReloader,
    ReloadError,
    running_pid,
)
from autoscaler.front.render import RenderError, render
from autoscaler.front.table import RouteShard, RouteTable


class CountingReloader:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    async def reload(self) -> None:
        self.calls += 1
        if self.fail:
            raise ReloadError("nginx container is gone")


def many_shards(count: int) -> tuple[RouteShard, ...]:
    return tuple(RouteShard(f"shard-{n}", f"127.0.0.1:{20000 + n}") for n in range(1, count + 1))


@pytest.mark.parametrize("count", [0, 1, 100])
async def test_rendered_configs_pass_nginx_t(nginx_dir: Path, count: int) -> None:
    # The 0-shard config is also served by every test's `front` before its first table (503s).
    settings = nginx_settings(nginx_dir)
    shards = many_shards(count)
    exceptions = {f"s{i}": shards[i % count].id for i in range(1000)} if count else {}
    text = render(RouteTable(shards, exceptions), settings, TEMPLATES)
    applier = NginxApplier(settings, CountingReloader())
    assert await applier.validate(text) is None
    assert text.count("upstream shard_") == count


def on_disk(path: str) -> str | None:
    return Path(path).read_text() if Path(path).exists() else None


async def assert_still_serving(front: Front, old_text: str | None) -> None:
    assert on_disk(front.settings.config_path) == old_text
    assert front.served is not None
    assert await front.version() == front.served.version


async def test_broken_template_keeps_old_config(front: Front, upstreams: Upstreams) -> None:
    await front.serve(RouteTable(upstreams.shards(2)))
    old_text = on_disk(front.settings.config_path)
    front.template_dir = front.folder / "templates"
    shutil.copytree(TEMPLATES, front.template_dir)
    template = front.template_dir / "nginx.conf.j2"
    good = template.read_text()
    new_table = RouteTable(upstreams.shards(3))

    for broken in ("{% if %}", "{{ no_such_value }}"):
        template.write_text(good + broken)
        with pytest.raises(RenderError, match="template"):
            front.render(new_table)

    template.write_text(good.replace("proxy_pass", "proxy_passs"))
    result = await front.applier.apply(front.render(new_table), new_table.version)
    assert not result.ok and not result.changed
    assert result.error is not None and 'unknown directive "proxy_passs"' in result.error
    assert on_disk(front.settings.config_path + ".rejected") is not None
    await assert_still_serving(front, old_text)


@pytest.mark.parametrize(
    ("shards", "exceptions", "message"),
    [
        ((RouteShard("shard-1", "127.0.0.1:1; include /etc/passwd"),), {}, "addr"),
        ((RouteShard("shard-1", "evil host:80"),), {}, "host"),
        ((RouteShard("shard_1", "127.0.0.1:80"),), {}, "not a shard id"),
        ((RouteShard("shard-1", "127.0.0.1:80"),), {"Alice": "shard-1"}, "lowercase"),
        ((RouteShard("shard-1", "127.0.0.1:80"),), {'a" x;': "shard-1"}, "session id"),
        ((RouteShard("shard-1", "127.0.0.1:80"),), {"alice": "shard-2"}, "not a rendered"),
    ],
)
async def test_invalid_values_never_reach_nginx(
    front: Front,
    upstreams: Upstreams,
    shards: tuple[RouteShard, ...],
    exceptions: dict[str, str],
    message: str,
) -> None:
    await front.serve(RouteTable(upstreams.shards(1)))
    old_text = on_disk(front.settings.config_path)
    with pytest.raises(RenderError, match=message):
        front.render(RouteTable(shards, exceptions))
    await assert_still_serving(front, old_text)


async def test_identical_config_is_not_reapplied(nginx_dir: Path) -> None:
    settings = nginx_settings(nginx_dir)
    reloader = CountingReloader()
    applier = NginxApplier(settings, reloader)
    text = render(RouteTable(many_shards(3)), settings, TEMPLATES)
    first = await applier.apply(text)
    again = await applier.apply(text)
    assert (first.changed, first.reloaded, first.ok) == (True, True, True)
    assert (again.changed, again.reloaded, again.ok) == (False, False, True)
    assert reloader.calls == 1
    forced = await applier.apply(text, force=True)  # e.g. a shard's container was replaced
    assert (forced.changed, forced.reloaded, forced.ok) == (False, True, True)
    assert reloader.calls == 2
    assert on_disk(settings.config_path + ".candidate") is None


async def test_failed_reload_is_reported_and_retried(nginx_dir: Path) -> None:
    settings = nginx_settings(nginx_dir)
    reloader = CountingReloader(fail=True)
    applier = NginxApplier(settings, reloader)
    text = render(RouteTable(many_shards(1)), settings, TEMPLATES)
    result = await applier.apply(text)
    assert result.changed and not result.reloaded
    assert result.error == "reload failed: nginx container is gone"
    # The same text again: installed already, but not served. The front keeps that account
    # (front/state.py: owed) and forces the retry.
    reloader.fail = False
    retried = await applier.apply(text, force=True)
    assert (retried.changed, retried.reloaded, retried.ok) == (False, True, True)
    assert (await applier.apply(text)).reloaded is False
    assert reloader.calls == 2


async def test_hanging_or_missing_nginx_is_an_error(nginx_dir: Path) -> None:
    hang = nginx_dir / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    text = render(RouteTable(()), nginx_settings(nginx_dir), TEMPLATES)
    for binary, expected in ((str(hang), "did not finish"), ("/nonexistent/nginx", "No such")):
        settings = nginx_settings(nginx_dir, binary=binary)
        applier = NginxApplier(settings, CountingReloader(), test_timeout=0.5)
        result = await applier.apply(text)
        assert result.error is not None and expected in result.error
        assert on_disk(settings.config_path) is None


async def test_local_reloader_starts_nginx_when_none_runs(
    nginx_dir: Path, upstreams: Upstreams
) -> None:
    settings = nginx_settings(nginx_dir, worker_processes=1)
    url = f"http://127.0.0.1:{settings.listen}"
    applier = NginxApplier(settings, LocalReloader(settings), confirm_url=url)
    table = RouteTable(upstreams.shards(2))
    result = await applier.apply(render(table, settings, TEMPLATES), table.version)
    pid = running_pid(Path(settings.pid_path))
    try:
        assert result.ok, result.error
        assert pid is not None
        async with aiohttp.ClientSession() as http:
            owner = table.ring().owner("alice")
            assert await shard_for(http, f"{url}/api/sessions/alice") == owner
    finally:
        if pid is not None:  # the daemon it started is ours to stop
            os.kill(pid, signal.SIGQUIT)
            wait_for(lambda: not port_open(settings.listen), 10, "nginx to stop")
            wait_for(lambda: running_pid(Path(settings.pid_path)) is None, 10, "nginx to exit")


def test_stale_pid_file_names_no_nginx(nginx_dir: Path) -> None:
    pid_file = nginx_dir / "nginx.pid"
    assert running_pid(pid_file) is None  # no file
    pid_file.write_text("not a pid\n")
    assert running_pid(pid_file) is None
    stranger = subprocess.Popen(["sleep", "30"])  # a recycled pid: alive, but not nginx
    try:
        pid_file.write_text(f"{stranger.pid}\n")
        assert running_pid(pid_file) is None
    finally:
        stranger.kill()
        stranger.wait()


async def test_confirm_gives_up_on_a_wrong_version(front: Front) -> None:
    assert await confirm(front.url, "not-the-version", within=0.3) is False
    assert front.served is not None
    assert await confirm(front.url, front.served.version, within=5) is True
