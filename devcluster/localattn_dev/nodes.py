"""Pure pieces of the node agent: Node/Lease manifests, what to do with a pod, and pod IP allocation.

Kept free of I/O so the kubelet-like decisions are unit-tested without a cluster; `nodeagent` executes them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GPU = "nvidia.com/gpu"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
KUBELET_VERSION = "v1.20.2"
FAKE_LABEL = "localattn.dev/fake-node"


def fmt_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class NodeShape:
    """Capacity of every fake node (allocatable equals capacity: nothing reserved for a real kubelet)."""

    gpus: int = 4
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    mode: str = "simulate"

    def capacity(self) -> dict[str, str]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            GPU: str(self.gpus),
            "ephemeral-storage": "500Gi",
        }


def host_ip(index: int) -> str:
    """Node `index` lives at 127.1.<index>.1 (not 127.0.x: Debian maps the hostname to 127.0.1.1)."""
    return f"127.1.{index}.1"


def conditions(heartbeat: datetime, transition: datetime) -> list[dict[str, str]]:
    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": fmt_time(heartbeat),
            "lastTransitionTime": fmt_time(transition),
        }

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
        cond("Ready", "True", "KubeletReady", "localattn node agent is posting ready status"),
    ]


def node_status(
    name: str, index: int, shape: NodeShape, heartbeat: datetime, transition: datetime
) -> dict[str, Any]:
    return {
        "capacity": shape.capacity(),
        "allocatable": shape.capacity(),
        "conditions": conditions(heartbeat, transition),
        "addresses": [{"type": "InternalIP", "address": host_ip(index)}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": name, "systemUUID": name, "bootID": name,
            "kernelVersion": "localattn", "osImage": "localattn fake GPU node",
            "containerRuntimeVersion": f"localattn-{shape.mode}://0.1",
            "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }  # fmt: skip


def node_manifest(name: str, index: int, shape: NodeShape, now: datetime) -> dict[str, Any]:
    """A Node as a kubelet registers it: status is accepted on create for nodes."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.present": "true",
                "node.kubernetes.io/instance-type": "fake-gpu",
                FAKE_LABEL: "true",
            },
            "annotations": {"localattn.dev/node-agent-mode": shape.mode},
        },
        "spec": {},
        "status": node_status(name, index, shape, now, now),
    }


def lease_manifest(node: str, node_uid: str | None, now: datetime) -> dict[str, Any]:
    """The node heartbeat the node lifecycle controller reads (owned by the Node, like a kubelet's)."""
    metadata: dict[str, Any] = {"name": node, "namespace": LEASE_NAMESPACE}
    if node_uid:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": fmt_micro(now)},
    }


class Action(enum.Enum):
    IGNORE = "ignore"
    MARK_RUNNING = "mark-running"
    DELETE = "delete"


def pod_key(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace', 'default')}/{meta['name']}"


def _is_ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def decide(pod: dict[str, Any], our_nodes: set[str], *, watch_running: bool = False) -> Action:
    """A kubelet's job for one pod: finish deletions, report running pods Running and Ready.

    `watch_running`: a pod already Running and Ready still needs the runtime (process mode adopts and
    probes it); in simulate mode there is nothing more to do for it."""
    if (pod.get("spec") or {}).get("nodeName") not in our_nodes:
        return Action.IGNORE
    if pod["metadata"].get("deletionTimestamp"):
        return Action.DELETE
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return Action.IGNORE
    if watch_running:
        return Action.MARK_RUNNING
    if status.get("phase") == "Running" and status.get("podIP") and _is_ready(status):
        return Action.IGNORE
    return Action.MARK_RUNNING


def held_ip(pod: dict[str, Any], our_nodes: set[str]) -> str | None:
    """The pod IP a live pod on one of our nodes already holds: a restarted agent must not hand it out again."""
    status = pod.get("status") or {}
    if (pod.get("spec") or {}).get("nodeName") not in our_nodes or status.get("phase") in (
        "Succeeded",
        "Failed",
    ):
        return None
    return status.get("podIP") or None


def running_status(pod: dict[str, Any], pod_ip: str, node_ip: str, now: datetime) -> dict[str, Any]:
    """Strategic-merge patch of pod status: Running, all conditions True, every container started and ready."""
    status = pod.get("status") or {}
    start = status.get("startTime") or fmt_time(now)
    uid = pod["metadata"].get("uid", "")
    spec = pod.get("spec") or {}

    def container(c: dict[str, Any], running: bool) -> dict[str, Any]:
        state: dict[str, Any] = (
            {"running": {"startedAt": start}}
            if running
            else {
                "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": start, "finishedAt": start}
            }
        )
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": f"localattn-sim://{c.get('image', '')}",
            "containerID": f"localattn-sim://{uid}/{c['name']}",
            "ready": running,
            "started": running,
            "restartCount": 0,
            "state": state,
        }

    patch: dict[str, Any] = {
        "phase": "Running",
        "hostIP": node_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start,
        "conditions": [
            {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": fmt_time(now)}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
        "containerStatuses": [container(c, True) for c in spec.get("containers") or []],
    }
    if spec.get("initContainers"):
        patch["initContainerStatuses"] = [container(c, False) for c in spec["initContainers"]]
    return {"status": patch}


def ready_summary(status: dict[str, Any]) -> str:
    """`ready 1/2, restarts 3` for the agent's log."""
    containers = status.get("containerStatuses") or []
    ready = sum(bool(c.get("ready")) for c in containers)
    restarts = sum(int(c.get("restartCount", 0)) for c in containers)
    return f"ready {ready}/{len(containers)}, restarts {restarts}"


def admit(pod_name: str, need: int, used: int, capacity: int) -> str | None:
    """kubelet's admission for GPUs (the scheduler already counts them; a second guard where pods run):
    the rejection message when the node cannot hold the pod, else None."""
    if need and used + need > capacity:
        return (
            f"Pod {pod_name}: node didn't have enough resource: {GPU}, "
            f"requested: {need}, used: {used}, capacity: {capacity}"
        )
    return None


class IpPool:
    """Unique pod IPs per node: node i hands out 127.1.i.2 .. 127.1.i.254, keeping an IP a pod already has.

    `claim(ip)` may refuse an address (process mode: another dev cluster on this machine holds it);
    `unclaim(ip)` is told when a pod lets its address go."""

    def __init__(
        self,
        nodes: list[str],
        claim: Callable[[str], bool] | None = None,
        unclaim: Callable[[str], None] | None = None,
    ) -> None:
        self._index = {name: i for i, name in enumerate(nodes)}
        self._by_key: dict[str, str] = {}
        self._claim = claim or (lambda ip: True)
        self._unclaim = unclaim or (lambda ip: None)

    def host_ip(self, node: str) -> str:
        return host_ip(self._index[node])

    def assign(self, node: str, key: str, current: str | None = None) -> str:
        if key in self._by_key:
            return self._by_key[key]
        prefix = f"127.1.{self._index[node]}."
        used = set(self._by_key.values())
        if current and current.startswith(prefix) and current not in used:
            ip = current  # a pod's IP does not change, even if another cluster claimed it meanwhile
            self._claim(ip)
        else:
            free = (
                f"{prefix}{octet}"
                for octet in range(2, 255)
                if f"{prefix}{octet}" not in used and self._claim(f"{prefix}{octet}")
            )
            ip = next(free, None) or ""
            if not ip:
                raise RuntimeError(f"no pod IPs left on {node}")
        self._by_key[key] = ip
        return ip

    def release(self, key: str) -> None:
        ip = self._by_key.pop(key, None)
        if ip is not None:
            self._unclaim(ip)

    def assigned(self) -> dict[str, str]:
        return dict(self._by_key)
