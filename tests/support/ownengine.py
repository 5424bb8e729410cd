"""A Docker engine of the test's own, which the test may SIGKILL and start again.

A second dockerd beside the machine's, with its own data-root, exec-root, socket, pid file and
default bridge, and without iptables rules of its own: the machine's engine is
never touched. The images a test needs are copied in (`docker save | docker load`). Compose and
the autoscaler reach it by its socket. Teardown, also on failure: every container and network
removed, the dockerd stopped (started again first if the test left it killed), leftover shims
killed, mounts and folders removed, the iptables rule below deleted.

Outside its folders: the engine's default bridge (DEFAULT_BRIDGE, made here) and an iptables
rule letting traffic cross the bridge of the compose network (named BRIDGE by the test's
override): the machine's engine sets FORWARD's policy to DROP, and with bridge netfilter on,
traffic between two containers passes that chain. Both are removed at teardown.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from support.procs import copy_images, kill_by_command_line, require_binary, unmount_under, wait_for

BRIDGE = "cschaos0"
DEFAULT_BRIDGE = "cschaosd"
"""The engine's own default bridge, made by the harness. A second dockerd in the machine's
network namespace must not delete `docker0`, the machine's engine's bridge (seen: its builds
then failed). Moby deletes it by name when started with `--bridge=none`, and when restarted
after a crash with `--default-address-pool` set: so neither is used here (the test's networks
name their subnets)."""
DEFAULT_SUBNET = "10.98.255.1/24"
FORWARD = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


@dataclass
class Engine:
    root: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """For DOCKER_HOST and docker.DockerClient(base_url=...)."""
        return f"unix://{self.root}/docker.sock"

    @property
    def socket_path(self) -> str:
        return f"{self.root}/docker.sock"

    @contextlib.contextmanager
    def client(self) -> Iterator[docker.DockerClient]:
        """A client of this engine, closed after the block."""
        client = docker.DockerClient(base_url=self.host, timeout=120)
        try:
            yield client
        finally:
            client.close()

    def start(self) -> None:
        argv = [
            require_binary("dockerd"),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "-H", self.host,
            "--pidfile", str(self.root / "docker.pid"),
            "--iptables=false",
            "--ip-masq=false",
            f"--bridge={DEFAULT_BRIDGE}",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.answers, 60, f"the test's dockerd (log {self.log})", interval=0.2)

    def answers(self) -> bool:
        # The CLI, not the SDK: a client made while the engine is down leaks its socket.
        argv = ["docker", "-H", self.host, "version", "--format", "{{.Server.Version}}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return done.returncode == 0

    def kill(self) -> None:
        """A crash: SIGKILL the dockerd alone (its containerd and the shims stay to be found)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def load(self, images: tuple[str, ...]) -> None:
        copy_images(self.host, images)


@contextlib.contextmanager
def own_engine(folder: Path, images: tuple[str, ...]) -> Iterator[Engine]:
    """`folder` keeps the log; the engine's roots go in a short folder of their own (a socket
    path must stay under 108 characters)."""
    for name in (BRIDGE, DEFAULT_BRIDGE):
        if Path(f"/sys/class/net/{name}").exists():
            raise RuntimeError(f"{name} exists: another test's engine runs, or one left it")
    machines_bridge = Path("/sys/class/net/docker0")
    had_bridge = machines_bridge.exists()
    engine = Engine(Path(tempfile.mkdtemp(prefix="cse-")), folder / "dockerd.log")
    try:
        subprocess.run(["iptables", "-w", "-I", FORWARD[0], "1", *FORWARD[1:]], check=True)
        for argv in (
            ["ip", "link", "add", DEFAULT_BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", DEFAULT_SUBNET, "dev", DEFAULT_BRIDGE],
            ["ip", "link", "set", DEFAULT_BRIDGE, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        engine.start()
        engine.load(images)
        yield engine
    finally:
        _teardown(engine)
    if had_bridge and not machines_bridge.exists():
        raise RuntimeError("the machine's engine lost its docker0 bridge during the test")


def _teardown(engine: Engine) -> None:
    if engine.proc is None and any((engine.root / "data").glob("*")):
        with contextlib.suppress(Exception):
            engine.start()  # a killed engine: started again to remove its containers
    if engine.proc is not None:
        with contextlib.suppress(Exception), engine.client() as client:
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.networks.prune()
        engine.proc.send_signal(signal.SIGTERM)
        try:
            engine.proc.wait(60)
        except subprocess.TimeoutExpired:
            engine.proc.kill()
            engine.proc.wait(10)
    kill_by_command_line(str(engine.root))  # what is left: containerd, shims, containers
    unmount_under(engine.root)
    shutil.rmtree(engine.root, ignore_errors=True)
    for name in (BRIDGE, DEFAULT_BRIDGE):
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    while subprocess.run(["iptables", "-w", "-D", *FORWARD], capture_output=True).returncode == 0:
        pass  # every copy of the rule this harness added
