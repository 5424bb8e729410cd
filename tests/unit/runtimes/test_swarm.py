"""The Swarm runtime's pure parts: the service spec, and reading services, tasks and nodes
(shaped as Docker 20.10 returns them; a live capture is trimmed here to the fields read)."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.runtimes.base import epoch
from autoscaler.runtimes.swarm import (
    Snapshot,
    cluster,
    current_task,
    image_ref,
    instances,
    service_spec,
)
from chatscale_contract.config import Config
from chatscale_contract.configload import ConfigError, parse_config

CONFIG = Config.model_validate(
    {
        "runtime": {
            "kind": "swarm",
            "project": "demo",
            "swarm": {
                "constraints": ["node.labels.chatscale == shards"],
                "preferences": ["spread=node.labels.zone"],
            },
        },
        "shard": {"network": "fleet", "memory_limit": "10g", "cpus": 1.5, "env": {"API_KEY": "k"}},
    }
)
GIB = 1024**3


def service(sid: str, shard: str, project: str = "demo", reserve: int = 10 * GIB) -> dict[str, Any]:
    return {
        "ID": sid,
        "CreatedAt": "2026-12-02T01:22:02.241777188Z",
        "UpdatedAt": "2026-12-02T01:22:02.241777188Z",
        "Spec": {
            "Name": f"{project}-{shard}",
            "Labels": {"chatscale.project": project, "chatscale.shard": shard},
            "TaskTemplate": {
                "Resources": {
                    "Limits": {"MemoryBytes": 10 * GIB},
                    "Reservations": {"MemoryBytes": reserve},
                }
            },
        },
    }


def task(
    service_id: str, state: str, node: str = "n1", created: str = "01:22:03", **kw: Any
) -> Any:
    return {
        "ID": f"t-{service_id}-{state}-{created}",
        "ServiceID": service_id,
        "NodeID": node,
        "DesiredState": kw.get("desired", "running"),
        "CreatedAt": f"2026-12-02T{created}.5Z",
        "Status": {"State": state, "Message": kw.get("message", state), "Err": kw.get("err")},
        "NetworksAttachments": [
            {"Network": {"Spec": {"Name": "fleet"}}, "Addresses": [kw.get("ip", "10.0.1.2/24")]}
        ],
    }


def node(nid: str, memory: int = 64 * GIB, **kw: Any) -> dict[str, Any]:
    return {
        "ID": nid,
        "Spec": {
            "Role": kw.get("role", "worker"),
            "Availability": kw.get("availability", "active"),
            "Labels": kw.get("labels", {"chatscale": "shards"}),
        },
        "Description": {"Hostname": f"host-{nid}", "Resources": {"MemoryBytes": memory}},
        "Status": {"State": kw.get("state", "ready")},
    }


def test_one_service_per_shard_with_its_limits_and_placement() -> None:
    spec = service_spec(CONFIG, "shard-3")
    assert spec["name"] == "demo-shard-3"
    assert spec["mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["endpoint_spec"] == {"Mode": "dnsrr"}, "no VIP: a shard is reached directly"
    assert spec["update_config"]["Order"] == "stop-first", "never two Chromiums on one login"
    template = spec["task_template"]
    resources = template["Resources"]
    assert resources["Limits"] == {"MemoryBytes": 10 * GIB, "NanoCPUs": 1_500_000_000}
    assert resources["Reservations"] == {"MemoryBytes": 10 * GIB}, "default: the whole limit"
    assert template["Placement"] == {
        "Constraints": ["node.labels.chatscale == shards"],
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
    }
    assert template["Networks"] == [{"Target": "fleet"}]
    assert template["RestartPolicy"]["Condition"] == "any"
    container = template["ContainerSpec"]
    env = dict(e.split("=", 1) for e in container["Env"])
    assert env["SHARD_ID"] == "shard-3" and env["SHARD_ADDR"] == "demo-shard-3:8000"
    assert env["API_KEY"] == "k"
    assert container["Labels"]["chatscale.shard"] == "shard-3" == spec["labels"]["chatscale.shard"]
    assert container["Mounts"][0]["Target"] == "/dev/shm"
    assert container["StopGracePeriod"] == 60 * 10**9


def test_a_smaller_reservation_can_be_chosen() -> None:
    config = CONFIG.model_copy(
        update={
            "runtime": CONFIG.runtime.model_copy(
                update={
                    "swarm": CONFIG.runtime.swarm.model_copy(update={"memory_reservation": "4g"})
                }
            )
        }
    )
    assert service_spec(config, "shard-1")["task_template"]["Resources"]["Reservations"] == {
        "MemoryBytes": 4 * GIB
    }


def test_services_and_their_current_tasks_become_shards() -> None:
    snapshot = Snapshot(
        services=[
            service("s1", "shard-1"),
            service("s2", "shard-2"),
            service("x", "shard-1", "other"),
        ],
        tasks=[
            task("s1", "running", ip="10.0.1.7/24"),
            task("s2", "shutdown", created="01:20:00", desired="shutdown"),
            task(
                "s2",
                "pending",
                node="",
                created="01:22:09",
                err="no suitable node (insufficient resources on 3 nodes)",
            ),
        ],
        nodes=[node("n1")],
        taken_at=0,
    )
    one, two = instances(snapshot, CONFIG)
    assert (one.shard_id, one.running, one.waiting) == ("shard-1", True, False)
    assert one.addr == "demo-shard-1:8000" and one.endpoint == "10.0.1.7:8000"
    assert one.node == "n1" and one.detail == "running on host-n1"
    assert (two.shard_id, two.running, two.waiting) == ("shard-2", False, True)
    assert two.detail == "pending: no suitable node (insufficient resources on 3 nodes)"
    assert two.node == ""


@pytest.mark.parametrize(
    ("state", "running", "waiting"),
    [
        ("pending", False, True),
        ("preparing", False, True),
        ("starting", True, False),  # the container runs; only Docker's health check is pending
        ("running", True, False),
        ("failed", False, False),
        ("rejected", False, False),
    ],
)
def test_task_states(state: str, running: bool, waiting: bool) -> None:
    snapshot = Snapshot([service("s1", "shard-1")], [task("s1", state)], [node("n1")], 0)
    (one,) = instances(snapshot, CONFIG)
    assert (one.running, one.waiting) == (running, waiting)


def test_a_service_without_a_task_yet_is_waiting() -> None:
    (one,) = instances(Snapshot([service("s1", "shard-1")], [], [], 0), CONFIG)
    assert one.waiting and not one.running and one.detail == "new"


def test_the_newest_task_meant_to_run_stands_for_the_service() -> None:
    old = task("s1", "running", created="01:00:00", desired="shutdown")
    new = task("s1", "preparing", created="01:05:00")
    assert current_task("s1", [old, new]) is new
    assert current_task("s1", [old]) is old
    assert current_task("s1", []) is None


def test_the_cluster_counts_every_services_reservation_on_each_node() -> None:
    snapshot = Snapshot(
        services=[service("s1", "shard-1"), service("db", "x", "other", reserve=20 * GIB)],
        tasks=[task("s1", "running", node="n1"), task("db", "running", node="n1")],
        nodes=[node("n1"), node("n2", state="down"), node("n3", availability="drain")],
        taken_at=0,
    )
    result = cluster(snapshot, CONFIG)
    by_id = {n.id: n for n in result.nodes}
    assert by_id["n1"].reserved_bytes == 30 * GIB and by_id["n1"].free_bytes == 34 * GIB
    assert not by_id["n2"].ready and not by_id["n3"].active
    assert result.reservation == 10 * GIB
    assert result.constraints == ("node.labels.chatscale == shards",)


def test_swarm_settings_are_checked_with_their_keys() -> None:
    text = (
        "shard:\n  network: fleet\n"
        "runtime:\n  kind: swarm\n  swarm:\n"
        "    constraints: ['node.labels.zone']\n"
        "    preferences: ['binpack=node.id']\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", {})
    found = [str(i) for i in info.value.issues]
    assert any(f.startswith("c.yaml:6: runtime.swarm.constraints.0:") for f in found), found
    assert any(f.startswith("c.yaml:7: runtime.swarm.preferences.0:") for f in found), found


def test_swarm_needs_an_overlay_network_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("runtime:\n  kind: swarm\n", "c.yaml", {})
    assert "runtime.kind swarm needs shard.network" in str(info.value)


def test_a_service_left_at_no_replicas_is_dead_not_waiting() -> None:
    """A stop scales to 0 before removing: interrupted there, the service must be replaced."""
    stopped = service("s1", "shard-1")
    stopped["Spec"]["Mode"] = {"Replicated": {"Replicas": 0}}
    (one,) = instances(Snapshot([stopped], [], [], 0), CONFIG)
    assert not one.running and not one.waiting and one.detail == "0 replicas"


def test_boot_time_counts_from_when_the_container_started() -> None:
    """A task that waited long for a node gets its whole boot_timeout once it runs."""
    late = task("s1", "starting", created="01:00:00")
    late["Status"]["Timestamp"] = "2026-12-02T01:30:00Z"
    (one,) = instances(Snapshot([service("s1", "shard-1")], [late], [node("n1")], 0), CONFIG)
    assert one.started_at == epoch("2026-12-02T01:30:00Z")
    pending = task("s1", "pending", created="01:00:00")
    (two,) = instances(Snapshot([service("s1", "shard-1")], [pending], [node("n1")], 0), CONFIG)
    assert two.started_at == epoch("2026-12-02T01:00:00.5Z")


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-12-02T01:22:02.241777188Z", 1796174522.241777),
        ("2026-12-02T01:22:00Z", 1796174520.0),  # Go writes whole seconds without a fraction
        ("2026-12-02T02:22:00.5+01:00", 1796174520.5),
        ("0001-01-01T00:00:00Z", 0.0),
        ("", 0.0),
    ],
)
def test_docker_timestamps(stamp: str, expected: float) -> None:
    assert epoch(stamp) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "digests", "expected"),
    [
        # Pulled from a registry: the digest it was pulled by, which every node can pull.
        (
            "reg:5000/team/shard:1.2",
            ["reg:5000/team/shard@sha256:aa"],
            "reg:5000/team/shard@sha256:aa",
        ),
        ("reg:5000/shard", ["reg:5000/shard@sha256:bb"], "reg:5000/shard@sha256:bb"),
        ("shard@sha256:cc", ["shard@sha256:cc"], "shard@sha256:cc"),
        # Built here, or pulled under another repository's name: the image id.
        ("chatscale-shard:latest", [], "sha256:id"),
        ("reg:5000/shard:1", ["mirror/shard@sha256:dd"], "sha256:id"),
    ],
)
def test_what_an_image_name_stands_for(name: str, digests: list[str], expected: str) -> None:
    assert image_ref(name, "sha256:id", digests) == expected


def test_a_registry_digest_pins_the_service_and_either_kind_is_labelled() -> None:
    pinned = service_spec(CONFIG, "shard-1", "reg/shard@sha256:aa")
    assert pinned["task_template"]["ContainerSpec"]["Image"] == "reg/shard@sha256:aa"
    assert pinned["labels"]["chatscale.image"] == "reg/shard@sha256:aa"
    local = service_spec(CONFIG, "shard-1", "sha256:id")
    assert local["task_template"]["ContainerSpec"]["Image"] == CONFIG.shard.image
    assert local["labels"]["chatscale.image"] == "sha256:id"
    unknown = service_spec(CONFIG, "shard-1")
    assert "chatscale.image" not in unknown["labels"]


def test_a_service_made_from_another_image_than_the_name_stands_for_now_is_outdated() -> None:
    old, new, unlabelled = (
        service("s1", "shard-1"),
        service("s2", "shard-2"),
        service("s3", "shard-3"),
    )
    old["Spec"]["Labels"]["chatscale.image"] = "sha256:old"
    new["Spec"]["Labels"]["chatscale.image"] = "sha256:new"
    snapshot = Snapshot([old, new, unlabelled], [], [node("n1")], taken_at=0)
    found = {i.shard_id: i.image_changed for i in instances(snapshot, CONFIG, "sha256:new")}
    assert found == {"shard-1": True, "shard-2": False, "shard-3": False}
    unknown = {i.shard_id: i.image_changed for i in instances(snapshot, CONFIG, "")}
    assert not any(unknown.values()), "an image the manager does not know gives no verdict"
