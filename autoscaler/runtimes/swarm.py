"""Shards as Docker Swarm services: one service per shard, for fleets on many hosts.

Why one service per shard: Swarm cannot be told which replica of a replicated service to
remove, and a shard is not interchangeable (it holds its sessions under its id). So every shard
is a service `<project>-shard-N` with one replica, reached by its service name (DNS round robin
over its one task: `endpoint_mode: dnsrr`, no IPVS). Swarm places the task and restarts it when
it crashes; the autoscaler still decides how many shards exist, which one drains, and when a
silent one is dead (then it forces a new task, on whatever node has room).

Each pass reads the whole cluster with three list calls (services, tasks, nodes), whatever the
fleet's size. The docker SDK is synchronous: every call runs in a worker thread. Argument
building and reading the lists are pure functions with their own tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoscaler.engine.cluster import Cluster, Node, shard_reservation
from autoscaler.runtimes.base import (
    LABEL_CONFIG,
    LABEL_IMAGE,
    LABEL_PROJECT,
    LABEL_SHARD,
    RuntimeFailure,
    ShardInstance,
    by_number,
    epoch,
    shard_env,
)
from autoscaler.runtimes.docker import engine_errors
from chatscale_contract.config import Config, parse_size

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)
WAITING = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready"})
"""Task states before the container runs: the scheduler or the node is still getting it going."""
RUNNING = frozenset({"starting", "running"})
"""The container runs. ("starting": until the image's health check first passes; the shard
already beats by then, and its heartbeat, not Docker's health check, says when it is ready.)"""
GONE = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})
SNAPSHOT_TTL = 1.0
"""A cluster read is reused within this many seconds (list_shards, then capacity, in one pass)."""
IMAGE_TTL = 10.0
"""How long what shard.image names is taken as known: a new pull or build is seen this late."""
NOT_A_MANAGER = (
    "this Docker engine is not a swarm manager, so it cannot run shards as services: on the"
    " machine that should manage the cluster run `docker swarm init` (then `docker swarm join` on"
    " the others), or point DOCKER_HOST at a manager; or set runtime.kind: docker"
)


def service_name(config: Config, shard_id: str) -> str:
    return f"{config.runtime.project}-{shard_id}"


def service_spec(config: Config, shard_id: str, image: str = "") -> dict[str, Any]:
    """Keyword arguments for `APIClient.create_service` of one shard. Purely computational.

    `image`: what shard.image names now (`image_ref`). A registry digest pins the service to it,
    as `docker service create` does, so every node runs that very image; either kind is kept in
    a label, to tell the service from one made after a new pull or build."""
    name = service_name(config, shard_id)
    shard, swarm = config.shard, config.runtime.swarm
    port = shard.port
    labels = {
        **shard.labels,
        LABEL_PROJECT: config.runtime.project,
        LABEL_SHARD: shard_id,
        LABEL_CONFIG: config.fingerprint(),
        **({LABEL_IMAGE: image} if image else {}),
    }
    env = shard_env(config, shard_id, f"{name}:{port}", port)
    container = {
        "Image": image if "@" in image else shard.image,
        "Env": [f"{k}={v}" for k, v in sorted(env.items())],
        "Labels": labels,
        "Hostname": name,
        "Init": True,
        "StopSignal": "SIGTERM",
        "StopGracePeriod": int(shard.stop_timeout * 1e9),
        # Chromium's shared memory: a tmpfs of shm_size (Swarm has no --shm-size).
        "Mounts": [
            {
                "Type": "tmpfs",
                "Target": "/dev/shm",
                "TmpfsOptions": {"SizeBytes": parse_size(shard.shm_size)},
            }
        ],
    }
    task = {
        "ContainerSpec": container,
        "Resources": {
            "Limits": {
                "MemoryBytes": parse_size(shard.memory_limit),
                "NanoCPUs": int(shard.cpus * 1e9),
            },
            "Reservations": {"MemoryBytes": shard_reservation(config)},
        },
        # Swarm restarts a crashed task at once (on any node with room); the autoscaler forces
        # a new task when one runs but stays silent.
        "RestartPolicy": {"Condition": "any", "Delay": int(swarm.restart_delay * 1e9)},
        "Placement": {
            "Constraints": list(swarm.constraints),
            "Preferences": [_preference(p) for p in swarm.preferences],
        },
        "Networks": [{"Target": shard.network}] if shard.network else [],
    }
    return {
        "task_template": task,
        "name": name,
        "labels": labels,
        "mode": {"Replicated": {"Replicas": 1}},
        # Never two Chromiums on one login: the old task stops before the new one starts.
        "update_config": {"Parallelism": 1, "Order": "stop-first", "FailureAction": "pause"},
        "endpoint_spec": {"Mode": "dnsrr"},
    }


def image_ref(name: str, image_id: str, repo_digests: Sequence[str]) -> str:
    """What the image name `name` stands for on an engine that has it as `image_id` with
    `repo_digests`: the digest it was pulled by from `name`'s repository (`repo@sha256:...`,
    which any node can pull), else its id (a local build, or images loaded on each node by
    hand). Purely computational."""
    last = name.rsplit("/", 1)[-1]
    repo = name.split("@", 1)[0]
    if "@" not in name and ":" in last:
        repo = name[: -len(last)] + last.split(":", 1)[0]
    pulled = [d for d in repo_digests if d.startswith(f"{repo}@")]
    return pulled[0] if pulled else image_id


def _preference(text: str) -> dict[str, Any]:
    strategy, _, descriptor = text.partition("=")
    return {strategy.strip().capitalize(): {"SpreadDescriptor": descriptor.strip()}}


@dataclass(frozen=True)
class Snapshot:
    """One read of the cluster: every service, every task meant to run, every node."""

    services: Sequence[Mapping[str, Any]]
    tasks: Sequence[Mapping[str, Any]]
    nodes: Sequence[Mapping[str, Any]]
    taken_at: float


def ours(snapshot: Snapshot, project: str) -> dict[str, Mapping[str, Any]]:
    """shard id -> its service, for this project's shard services. Purely computational."""
    found = {}
    for service in snapshot.services:
        labels = service.get("Spec", {}).get("Labels") or {}
        if labels.get(LABEL_PROJECT) == project and LABEL_SHARD in labels:
            found[labels[LABEL_SHARD]] = service
    return found


def current_task(service_id: str, tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The task that stands for the service now: the newest one meant to run, else the newest.
    Purely computational."""
    mine = [t for t in tasks if t.get("ServiceID") == service_id]
    meant = [t for t in mine if t.get("DesiredState") == "running"] or mine
    return max(meant, key=lambda t: epoch(t.get("CreatedAt", "")), default=None)


def instances(snapshot: Snapshot, config: Config, image: str = "") -> list[ShardInstance]:
    """Every shard service as the engine sees it; `image`: what shard.image names now ("":
    unknown, no service counts as on an older image). Purely computational."""
    hostnames = {n["ID"]: n.get("Description", {}).get("Hostname", "") for n in snapshot.nodes}
    found = []
    for shard_id, service in ours(snapshot, config.runtime.project).items():
        task = current_task(service["ID"], snapshot.tasks)
        found.append(_instance(shard_id, service, task, hostnames, config, image))
    return by_number(found)


def _instance(
    shard_id: str,
    service: Mapping[str, Any],
    task: Mapping[str, Any] | None,
    hostnames: Mapping[str, str],
    config: Config,
    image: str,
) -> ShardInstance:
    spec = service["Spec"]
    port = config.shard.port
    limits = spec.get("TaskTemplate", {}).get("Resources", {}).get("Limits", {})
    made_from = spec.get("Labels", {}).get(LABEL_IMAGE, "")
    common = {
        "shard_id": shard_id,
        "addr": f"{spec['Name']}:{port}",
        "config_hash": spec.get("Labels", {}).get(LABEL_CONFIG, ""),
        "memory_limit_bytes": int(limits.get("MemoryBytes") or 0),
        "labels": dict(spec.get("Labels", {})),
        # A service from before this label, or an image the manager does not know: no verdict.
        "image_changed": bool(image and made_from and made_from != image),
    }
    if task is None:
        started = epoch(service.get("UpdatedAt") or service.get("CreatedAt", ""))
        if _replicas(spec) == 0:
            # Scaled to none and left so (a stop that was interrupted): dead, so it is replaced.
            return ShardInstance(running=False, started_at=started, detail="0 replicas", **common)
        # Just created or forced: the orchestrator has not made its task yet.
        return ShardInstance(
            running=False, waiting=True, started_at=started, detail="new", **common
        )
    status = task.get("Status", {})
    state = status.get("State", "")
    message = status.get("Err") or status.get("Message") or ""
    node = task.get("NodeID", "")
    where = f" on {hostnames[node]}" if node in hostnames else ""
    # Boot time counts from when the container started, not from when the task was made: a
    # task that waited long for a node with room must still get its whole boot_timeout.
    since = status.get("Timestamp") if state in RUNNING else task.get("CreatedAt")
    return ShardInstance(
        running=state in RUNNING,
        waiting=state in WAITING,
        started_at=epoch(since or ""),
        endpoint=_overlay_endpoint(task, config.shard.network, port),
        detail=(f"{state}: {message}" if message and message != state else state) + where,
        node=node,
        **common,
    )


def _replicas(spec: Mapping[str, Any]) -> int:
    return int(spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 1))


def _overlay_endpoint(task: Mapping[str, Any], network: str | None, port: int) -> str:
    """The task's address on the shard network (reachable by peers on that network)."""
    for attachment in task.get("NetworksAttachments") or []:
        if attachment.get("Network", {}).get("Spec", {}).get("Name") == network:
            for address in attachment.get("Addresses") or []:
                return f"{address.split('/')[0]}:{port}"
    return ""


def cluster(snapshot: Snapshot, config: Config) -> Cluster:
    """The nodes with what every running task reserves on them. Purely computational."""
    reserved_by_service = {
        s["ID"]: int(
            s.get("Spec", {})
            .get("TaskTemplate", {})
            .get("Resources", {})
            .get("Reservations", {})
            .get("MemoryBytes")
            or 0
        )
        for s in snapshot.services
    }
    reserved: dict[str, int] = {}
    for task in snapshot.tasks:
        if task.get("DesiredState") == "running" and task.get("NodeID"):
            node = task["NodeID"]
            reserved[node] = reserved.get(node, 0) + reserved_by_service.get(task["ServiceID"], 0)
    nodes = tuple(_node(n, reserved.get(n["ID"], 0)) for n in snapshot.nodes)
    return Cluster(nodes, shard_reservation(config), config.runtime.swarm.constraints)


def _node(raw: Mapping[str, Any], reserved: int) -> Node:
    description, spec = raw.get("Description", {}), raw.get("Spec", {})
    return Node(
        id=raw["ID"],
        hostname=description.get("Hostname", ""),
        ready=raw.get("Status", {}).get("State") == "ready",
        active=spec.get("Availability") == "active",
        memory_bytes=int(description.get("Resources", {}).get("MemoryBytes") or 0),
        reserved_bytes=reserved,
        labels=dict(spec.get("Labels") or {}),
        role=spec.get("Role", "worker"),
        engine_labels=dict(description.get("Engine", {}).get("Labels") or {}),
    )


class SwarmRuntime:
    """Runtime over a Swarm manager. Every SDK call runs in a worker thread."""

    def __init__(self, config: Config, client: docker.DockerClient | None = None):
        self.config = config
        self._client = client
        self._snapshot: Snapshot | None = None
        self._image: tuple[str, float] | None = None
        """What shard.image names (image_ref) and when that was read (monotonic)."""
        self.calls = 0
        """Docker API calls made so far (the benchmark reports calls per pass)."""

    def reconfigure(self, config: Config) -> None:
        self.config = config

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            import docker as sdk

            self._client = sdk.from_env()
        return self._client

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    async def list_shards(self) -> list[ShardInstance]:
        snapshot = await asyncio.to_thread(self._read)
        image = await asyncio.to_thread(self._image_ref)
        return instances(snapshot, self.config, image)

    async def cluster(self) -> Cluster | None:
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.taken_at > SNAPSHOT_TTL:
            snapshot = await asyncio.to_thread(self._read)
        return cluster(snapshot, self.config)

    async def start(self, shard_id: str) -> ShardInstance:
        return await asyncio.to_thread(self._start, shard_id)

    async def stop(self, shard_id: str, timeout: float) -> None:
        await asyncio.to_thread(self._stop, shard_id, timeout)

    async def replace(self, shard_id: str, timeout: float) -> None:
        await asyncio.to_thread(self._replace, shard_id)

    async def signal(self, shard_id: str, signum: int) -> None:
        raise RuntimeFailure("the swarm runtime cannot signal a task on another node")

    async def inspect(self, shard_id: str) -> ShardInstance | None:
        snapshot = await asyncio.to_thread(self._read)
        image = await asyncio.to_thread(self._image_ref)
        found = [i for i in instances(snapshot, self.config, image) if i.shard_id == shard_id]
        return found[0] if found else None

    # --- synchronous parts, run in threads --------------------------------------------------

    def _api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        try:
            return getattr(self.client.api, method)(*args, **kwargs)
        except engine_errors() as exc:
            raise RuntimeFailure(f"docker: {exc}") from exc

    def _check(self) -> None:
        info = self._api("info")
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise RuntimeFailure(NOT_A_MANAGER)
        network = self.config.shard.network
        found = self._api("networks", names=[network]) if network else []
        usable = [n for n in found if n.get("Driver") == "overlay" and n.get("Attachable")]
        if network and not usable:
            raise RuntimeFailure(
                f"shard.network {network!r} is not an attachable overlay network on this swarm:"
                f" create it with `docker network create --driver overlay --attachable {network}`"
                " (the stack file does)"
            )

    def _read(self) -> Snapshot:
        services = self._api("services")
        tasks = self._api("tasks", filters={"desired-state": "running"})
        nodes = self._api("nodes")
        self._snapshot = Snapshot(services, tasks, nodes, time.monotonic())
        return self._snapshot

    def _image_ref(self) -> str:
        """image_ref of shard.image on the manager's engine, read at most every IMAGE_TTL
        seconds; "" when the engine has no image by that name (nodes pull it by its name).
        An engine that fails to answer is not taken to have no image: the last answer stands
        (else services made meanwhile would carry no image label and be replaced later)."""
        if self._image and time.monotonic() - self._image[1] < IMAGE_TTL:
            return self._image[0]
        import docker.errors

        name = self.config.shard.image
        try:
            found = self._api("inspect_image", name)
            ref = image_ref(name, str(found.get("Id", "")), found.get("RepoDigests") or [])
        except RuntimeFailure as exc:
            if not isinstance(exc.__cause__, docker.errors.ImageNotFound):
                if self._image is None:
                    raise
                log.warning("image %s not inspected (%s); using the last answer", name, exc)
                return self._image[0]
            ref = ""
        self._image = (ref, time.monotonic())
        return ref

    def _find(self, shard_id: str) -> Mapping[str, Any] | None:
        name = service_name(self.config, shard_id)
        found = self._api("services", filters={"name": name})
        return next((s for s in found if s["Spec"]["Name"] == name), None)

    def _start(self, shard_id: str) -> ShardInstance:
        service = self._find(shard_id)
        image = self._image_ref()
        if service is None:
            spec = service_spec(self.config, shard_id, image)
            image_name = spec["task_template"]["ContainerSpec"]["Image"]
            log.info("creating service %s (%s)", spec["name"], image_name)
            self._api("create_service", **spec)
        elif _replicas(service["Spec"]) == 0:  # left scaled to none by an interrupted stop
            self._scale(service, 1)
        snapshot = self._read()
        return next(i for i in instances(snapshot, self.config, image) if i.shard_id == shard_id)

    def _stop(self, shard_id: str, timeout: float) -> None:
        """Scale the service to no task, wait until that task is gone, then remove the service.

        Scaling first keeps the task visible while it stops (after `docker service rm` its
        tasks can no longer be listed): the task gets SIGTERM and its stop grace period to hand
        its sessions off, and the caller checks Redis afterwards, so this waits for the end.
        """
        service = self._find(shard_id)
        if service is None:
            return
        name = service["Spec"]["Name"]
        log.info("stopping service %s", name)
        self._scale(service, 0)
        deadline = time.monotonic() + timeout + 10
        while time.monotonic() < deadline:
            tasks = self._api("tasks", filters={"service": service["ID"]})
            if all(t.get("Status", {}).get("State") in GONE for t in tasks):
                break
            time.sleep(0.5)
        else:
            log.warning("service %s: its task did not stop within %.0f s", name, timeout + 10)
        self._api("remove_service", service["ID"])

    def _replace(self, shard_id: str) -> None:
        service = self._find(shard_id)
        if service is None:
            self._start(shard_id)
            return
        # A new task in place of the silent one, keeping the service (its name, its address).
        task = dict(service["Spec"]["TaskTemplate"])
        task["ForceUpdate"] = int(task.get("ForceUpdate") or 0) + 1
        log.info("forcing a new task for service %s", service["Spec"]["Name"])
        self._api(
            "update_service",
            service["ID"],
            service["Version"]["Index"],
            task_template=task,
            mode={"Replicated": {"Replicas": 1}},  # also undoes an interrupted stop's 0
            fetch_current_spec=True,
        )

    def _scale(self, service: Mapping[str, Any], replicas: int) -> None:
        self._api(
            "update_service",
            service["ID"],
            service["Version"]["Index"],
            task_template=service["Spec"]["TaskTemplate"],
            mode={"Replicated": {"Replicas": replicas}},
            fetch_current_spec=True,
        )
