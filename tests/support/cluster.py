"""A Docker Swarm of several nodes on this one machine, owned by one test, undone afterwards.

The manager is the machine's own engine. Every other node is a dockerd of its own in a network
namespace (`ip netns`), joined to the host by a veth pair on a bridge of the test's own
(10.99.0.0/24): the nodes reach each other only over that bridge, which is exactly what Swarm's
overlay network (VXLAN) needs. Teardown, also on failure: services removed, every node leaves
the swarm, the extra dockerds are stopped, namespaces, links and bridge deleted. Only traffic
between namespaces this harness created; nothing else on the machine is changed, and it refuses
to start where a swarm or its bridge already exist.

The one change outside the namespaces: an iptables rule letting traffic cross the test's own
bridge (see FORWARD), removed again at teardown.

Killing a node (`kill_node`) is a power loss: its dockerd, containerd, container shims and every
container process are SIGKILLed at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker

from support.procs import copy_images, kill_by_command_line, unmount_under, wait_for
from support.swarm import TEST_MARK, has_gwbridge, leave, remove_services, run, swarm_state

BRIDGE = "csbr0"
FORWARD = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
"""Docker sets the host's FORWARD policy to DROP; with bridge netfilter on, traffic between two
nodes on the test's bridge passes that chain, so VXLAN and gossip between workers need this."""
SUBNET = "10.99.0"
MANAGER_ADDR = f"{SUBNET}.1"


@dataclass
class Node:
    name: str
    addr: str
    root: Path
    """Holds the node's data-root, exec-root, socket and pid file."""
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def socket(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def exec_root(self) -> Path:
        return self.root / "exec"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket, timeout=120)

    def docker(self, *argv: str, check: bool = True) -> str:
        return run("docker", "-H", self.socket, *argv, check=check)


@dataclass
class Cluster:
    manager: docker.DockerClient
    workers: list[Node] = field(default_factory=list)
    log: Path = Path("/tmp")
    gwbridge_before: bool = True

    def node_id(self, name: str) -> str:
        return next(n.node_id for n in self.workers if n.name == name)


def _sh(*argv: str, check: bool = True) -> None:
    subprocess.run(argv, check=check, capture_output=True, timeout=60)


def _add_node(node: Node, index: int, log: Path) -> None:
    """Namespace, link and dockerd of `node` (already registered, so teardown finds it)."""
    node.root.mkdir(parents=True)
    host_end, node_end = f"csh{index}", f"csn{index}"
    name = node.name
    _sh("ip", "netns", "add", name)
    _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
    _sh("ip", "link", "set", node_end, "netns", name)
    _sh("ip", "link", "set", host_end, "master", BRIDGE)
    _sh("ip", "link", "set", host_end, "up")
    for cmd in (
        ["ip", "addr", "add", f"{node.addr}/24", "dev", node_end],
        ["ip", "link", "set", node_end, "up"],
        ["ip", "link", "set", "lo", "up"],
        ["ip", "route", "add", "default", "via", MANAGER_ADDR],
    ):
        _sh("ip", "netns", "exec", name, *cmd)
    # nsenter, not `ip netns exec`: that remounts /sys, and dockerd then finds no cgroups.
    argv = [
        "nsenter",
        f"--net=/var/run/netns/{name}",
        shutil.which("dockerd") or "dockerd",
        "--data-root", str(node.root / "data"),
        "--exec-root", str(node.exec_root),
        "-H", node.socket,
        "--pidfile", str(node.root / "docker.pid"),
        "--iptables=false",
        "--bridge=none",
    ]  # fmt: skip
    with (log / f"dockerd-{node.name}.log").open("ab") as out:
        node.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def answers() -> bool:
        return bool(node.docker("version", "--format", "{{.Server.Version}}", check=False))

    wait_for(answers, 60, f"dockerd of {node.name} (log {log}/dockerd-{node.name}.log)")


@contextlib.contextmanager
def cluster(folder: Path, workers: int = 2, images: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """`folder` keeps the logs; the nodes' roots go in a short folder of their own (a socket
    path must stay under 108 characters)."""
    manager = docker.from_env()
    roots = Path(tempfile.mkdtemp(prefix="csn-"))
    if swarm_state(manager) != "inactive":
        raise RuntimeError("this Docker engine is already part of a swarm: not touching it")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        raise RuntimeError(f"{BRIDGE} exists: another cluster test runs, or one left it")
    state = Cluster(manager, log=folder, gwbridge_before=has_gwbridge(manager))
    try:
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{MANAGER_ADDR}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        _sh("iptables", "-w", "-I", *FORWARD[:1], "1", *FORWARD[1:])
        for index in range(2, 2 + workers):
            node = Node(f"csnode{index}", f"{SUBNET}.{index}", roots / f"csnode{index}")
            state.workers.append(node)
            _add_node(node, index, folder)
        for node in state.workers:
            _load_images(node, images)
        run("docker", "swarm", "init", "--advertise-addr", MANAGER_ADDR)
        manager_id = run("docker", "info", "--format", "{{.Swarm.NodeID}}").strip()
        run("docker", "node", "update", "--label-add", TEST_MARK, manager_id)
        token = run("docker", "swarm", "join-token", "-q", "worker").strip()
        for node in state.workers:
            node.docker("swarm", "join", "--token", token, "--advertise-addr", node.addr,
                        f"{MANAGER_ADDR}:2377")  # fmt: skip
            node.node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").strip()
        run("docker", "node", "update", "--label-add", "chatscale.redis=true", manager_id)
        wait_for(lambda: _ready(manager) == 1 + workers, 60, "every node ready in the swarm")
        yield state
    finally:
        _teardown(state)
        shutil.rmtree(roots, ignore_errors=True)


def _load_images(node: Node, images: tuple[str, ...]) -> None:
    """No registry here: each node gets the images by `docker save | docker load`."""
    if not images:
        return
    copy_images(node.socket, images)


def _ready(manager: docker.DockerClient) -> int:
    return sum(1 for n in manager.nodes.list() if n.attrs["Status"]["State"] == "ready")


def kill_node(node: Node) -> int:
    """Power loss: SIGKILL the node's dockerd, containerd, shims and every container process.

    Container shims are daemons of their own, so they are found by the node's exec-root on
    their command line, and everything below them (the containers) with them. Returns how many
    processes were killed."""
    also = [node.proc.pid] if node.proc is not None else []
    killed = kill_by_command_line(str(node.exec_root), also)
    if node.proc is not None:
        node.proc.wait(30)
    return killed


def _teardown(state: Cluster) -> None:
    with contextlib.suppress(Exception):
        remove_services(state.manager)
    for node in state.workers:
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(Exception):
                node.docker("swarm", "leave", "--force", check=False)
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_node(node)
        else:
            kill_node(node)  # whatever a killed node left (shims, containers)
    with contextlib.suppress(TimeoutError):
        leave(state.manager, state.gwbridge_before)
    for node in state.workers:
        _sh("ip", "netns", "del", node.name, check=False)
        _unmount(node.root)
        shutil.rmtree(node.root, ignore_errors=True)
    for index in range(2, 2 + len(state.workers)):
        _sh("ip", "link", "del", f"csh{index}", check=False)
    _sh("ip", "link", "del", BRIDGE, check=False)
    while subprocess.run(["iptables", "-w", "-D", *FORWARD], capture_output=True).returncode == 0:
        pass  # every copy of the rule this harness added
    state.manager.close()


def _unmount(root: Path) -> None:
    unmount_under(root)
    time.sleep(0.1)
    os.sync()
