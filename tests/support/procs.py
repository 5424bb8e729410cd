"""Helpers to run real servers (Redis, nginx, shard processes) as test-owned child processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import redis

from chatscale_contract import proctree


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(size: int = 10) -> int:
    """A base port whose next `size` ports can all be bound now.

    Picked below the kernel's ephemeral range (32768+), where outgoing connections of a busy
    test run take their local ports and would make a later bind fail.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - size)
        if all(_bindable(base + i) for i in range(size)):
            return base
    raise RuntimeError(f"no block of {size} free ports")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def require_binary(name: str) -> str:
    """The path of `name`; fails the test (never skips) when it is missing."""
    path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} is not installed; run scripts/setup-test-env (see README)")
    return path


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # the thing being waited for may not be up yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def http_ok(url: str, timeout: float = 1) -> bool:
    """GET `url` answers 200 (no proxy; any failure, including a refused connection: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Until `check` (plain or async) is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something listens on `port`. A port in the ephemeral range can look open with nobody
    there: polled often enough, the kernel picks that very port as the probe's own source port
    and the socket connects to itself (TCP simultaneous open). Seen once in CI; ruled out here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        if sock.connect_ex((host, port)) != 0:
            return False
        return bool(sock.getsockname() != sock.getpeername())


def start(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None, new_group: bool = True
) -> subprocess.Popen[bytes]:
    """Start a child process with its output in `log`, in its own process group."""
    # The child keeps its own copy of the descriptor; the parent's is closed right away.
    with log.open("ab") as handle:
        return subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=new_group,
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    """A test run started in the background (`cmd &` in a script) ignores SIGINT, and children
    inherit that: a shell cannot even trap a signal ignored when it started. Children get the
    default back, so a test's Ctrl-C reaches them as it would from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_redis(
    folder: Path, binds: Sequence[str] = ("127.0.0.1",)
) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (no persistence) listening on `binds` at a free port.

    Returns the process and its base URL at the last address (e.g. a Docker network's gateway,
    where the test's containers reach it). Waits until it answers.
    """
    port = free_port()
    argv = [
        require_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        *binds,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--dir",
        str(folder),
    ]
    proc = start(argv, folder / "redis.log")
    host = binds[-1]
    client = redis.Redis(host=host, port=port)
    try:
        wait_for(lambda: bool(client.ping()), 10, f"redis-server on {host}:{port}")
    finally:
        client.close()
    return proc, f"redis://{host}:{port}"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def kill_by_command_line(marker: str, also: Sequence[int] = ()) -> int:
    """SIGKILL every process whose command line contains `marker` (and the pids in `also`),
    with everything below them; returns how many were killed. For daemons that detach from
    whoever started them, e.g. a test dockerd's containerd and shims (named by its exec-root)."""
    procs = proctree.scan(None)
    roots = set(also)
    for pid in procs:
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                roots.add(pid)
    return proctree.kill(proctree.tree(procs, roots))


def unmount_under(root: Path) -> None:
    """Lazily unmount everything mounted below `root` (a dockerd killed outright leaves its
    overlay and shm mounts)."""
    with contextlib.suppress(OSError):
        mounts = Path("/proc/mounts").read_text().splitlines()
        for target in sorted((m.split()[1] for m in mounts if str(root) in m), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)


def copy_images(docker_host: str, images: Sequence[str]) -> None:
    """No registry here: the machine's engine saves `images`, the engine at `docker_host`
    (e.g. unix:///path/docker.sock) loads them."""
    with subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE) as save:
        subprocess.run(
            ["docker", "-H", docker_host, "load", "-q"],
            stdin=save.stdout,
            check=True,
            capture_output=True,
            timeout=600,
        )
