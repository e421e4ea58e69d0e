"""The node agent's kubelet decisions, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from localattn_dev import nodes as pure

NOW = datetime(2026, 11, 29, 3, 0, 0, 123456, tzinfo=UTC)
OURS = {"localattn-gpu-0", "localattn-gpu-1"}


def pod(node: str | None = "localattn-gpu-0", **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "ns", "uid": "u1"}
    if status.pop("deleting", False):
        meta["deletionTimestamp"] = "2026-11-29T03:00:00Z"
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "vllm"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec, "status": status}


READY = [{"type": "Ready", "status": "True"}]


@pytest.mark.parametrize(
    ("p", "action"),
    [
        (pod(node=None), pure.Action.IGNORE),  # not scheduled yet
        (pod(node="someone-elses"), pure.Action.IGNORE),
        (pod(phase="Pending"), pure.Action.MARK_RUNNING),
        (pod(phase="Running", podIP="127.1.0.2"), pure.Action.MARK_RUNNING),  # running but not Ready
        (pod(phase="Running", podIP="127.1.0.2", conditions=READY), pure.Action.IGNORE),
        (pod(phase="Running", conditions=READY), pure.Action.MARK_RUNNING),  # no IP yet
        (pod(phase="Succeeded"), pure.Action.IGNORE),
        (pod(phase="Running", podIP="127.1.0.2", conditions=READY, deleting=True), pure.Action.DELETE),
        (pod(deleting=True), pure.Action.DELETE),
    ],
)
def test_decide(p: dict[str, Any], action: pure.Action) -> None:
    assert pure.decide(p, OURS) is action


def test_running_status_reports_every_container_ready() -> None:
    p = pod(phase="Pending")
    p["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    p["spec"]["initContainers"] = [{"name": "init", "image": "busybox"}]
    status = pure.running_status(p, "127.1.0.7", "127.1.0.1", NOW)["status"]
    assert status["phase"] == "Running"
    assert (status["podIP"], status["hostIP"], status["podIPs"]) == (
        "127.1.0.7",
        "127.1.0.1",
        [{"ip": "127.1.0.7"}],
    )
    assert {c["type"] for c in status["conditions"] if c["status"] == "True"} == {
        "PodScheduled", "Initialized", "ContainersReady", "Ready",
    }  # fmt: skip
    assert [(c["name"], c["ready"], "running" in c["state"]) for c in status["containerStatuses"]] == [
        ("c", True, True),
        ("sidecar", True, True),
    ]
    assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # a status that passes through decide() again is left alone
    merged = {**p, "status": {**status}}
    assert pure.decide(merged, OURS) is pure.Action.IGNORE


def test_running_status_keeps_start_time() -> None:
    p = pod(phase="Running", startTime="2026-01-01T00:00:00Z")
    assert (
        pure.running_status(p, "127.1.0.2", "127.1.0.1", NOW)["status"]["startTime"] == "2026-01-01T00:00:00Z"
    )


def test_ip_pool_unique_per_node_and_stable() -> None:
    pool = pure.IpPool(["n0", "n1"])
    a = pool.assign("n0", "ns/a")
    b = pool.assign("n0", "ns/b")
    c = pool.assign("n1", "ns/c")
    assert (a, b, c) == ("127.1.0.2", "127.1.0.3", "127.1.1.2")
    assert pool.host_ip("n1") == "127.1.1.1"
    assert pool.assign("n0", "ns/a") == a  # idempotent
    pool.release("ns/a")
    assert pool.assign("n0", "ns/d") == "127.1.0.2"  # reused after release


def test_ip_pool_keeps_an_existing_ip_unless_taken_or_foreign() -> None:
    pool = pure.IpPool(["n0", "n1"])
    assert pool.assign("n0", "ns/a", current="127.1.0.9") == "127.1.0.9"  # survives an agent restart
    assert pool.assign("n0", "ns/b", current="127.1.0.9") == "127.1.0.2"  # duplicate: fresh one
    assert pool.assign("n0", "ns/c", current="127.1.1.5") == "127.1.0.3"  # other node's range


def test_ip_pool_exhaustion_is_an_error() -> None:
    pool = pure.IpPool(["n0"])
    for i in range(253):
        pool.assign("n0", f"ns/{i}")
    with pytest.raises(RuntimeError, match="no pod IPs"):
        pool.assign("n0", "ns/one-too-many")


def test_node_manifest_advertises_gpus_and_is_ready() -> None:
    shape = pure.NodeShape(gpus=8, cpu="16", memory="64Gi")
    node = pure.node_manifest("localattn-gpu-1", 1, shape, NOW)
    assert node["status"]["capacity"][pure.GPU] == "8"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "fake-gpu"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastHeartbeatTime"]) == ("True", "2026-11-29T03:00:00Z")
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.1.1.1"}


def test_lease_is_owned_by_its_node_and_renewed_with_microseconds() -> None:
    lease = pure.lease_manifest("n0", "uid-1", NOW)
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert lease["spec"]["renewTime"] == "2026-11-29T03:00:00.123456Z"


def test_held_ip_is_reclaimed_only_for_live_pods_on_our_nodes() -> None:
    assert pure.held_ip(pod(phase="Running", podIP="127.1.0.5", conditions=READY), OURS) == "127.1.0.5"
    assert pure.held_ip(pod(phase="Pending"), OURS) is None
    assert pure.held_ip(pod(node="someone-elses", phase="Running", podIP="10.0.0.5"), OURS) is None
    assert pure.held_ip(pod(phase="Succeeded", podIP="127.1.0.5"), OURS) is None
