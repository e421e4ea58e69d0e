"""Process mode end to end: a real control plane whose node agent runs pods as local processes, with real
vLLM CPU servers rendered by the operator. One cluster and one 2-replica vLLM Deployment per module (vLLM
start-up is the cost); the tests run in file order and share them, the last one takes the cluster down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev import procs
from localattn_dev.controlplane import ClusterInfo, down, up
from localattn_dev.podlayout import pods_dir, record_name
from localattn_dev.testing import (
    kubectl,
    kubectl_json,
    model_volume,
    temp_namespace,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.slow]
APP = "tiny"
PORT = 8000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    state_dir = tmp_path_factory.mktemp("process-pods")
    info = up(
        state_dir, nodes=2, gpus_per_node=2, node_mode="process", use_existing=False, models=("tiny-random",)
    )
    yield info
    down(state_dir, purge=True)


@pytest.fixture(scope="module")
def ns(cluster: ClusterInfo) -> Iterator[str]:
    with temp_namespace(cluster.kubeconfig, prefix="proc-e2e-") as name:
        yield name


def apply(cluster: ClusterInfo, ns: str, *manifests: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)})
    kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=body)


def rendered_vllm(ns: str, replicas: int) -> list[dict[str, Any]]:
    """The operator's own ConfigMap + Deployment for the tiny random model (no LAD: owner refs dropped)."""
    from localattn_operator.models import LocalAttnDeploymentSpec
    from localattn_operator.render import Owner, render_children

    spec = LocalAttnDeploymentSpec.model_validate(
        {
            "replicas": replicas,
            "model": {"uri": "pvc://models/tiny-random", "servedModelName": APP},
            "runtime": {
                "image": "localattn/vllm-runtime:0.1.0",
                "maxModelLen": 2048,
                "dtype": "float32",
                "extraArgs": ["--enforce-eager"],
                "resources": {
                    "requests": {"nvidia.com/gpu": 1, "cpu": "1", "memory": "3Gi"},
                    "limits": {"nvidia.com/gpu": 1, "memory": "3Gi"},
                },
            },
            "localAttention": {"enabled": True, "windowSize": 64, "sinkTokens": 4, "minContextLength": 128},
            "memory": {"kvCacheMemory": "256Mi"},
        }
    )
    children = [c for c in render_children(Owner(APP, ns, "0"), spec) if c["kind"] != "Service"]
    for child in children:
        child["metadata"].pop("ownerReferences", None)
    (deployment,) = [c for c in children if c["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "$(POD_IP)" in container["args"], "the operator renders --host $(POD_IP)"
    return children


def pods(
    cluster: ClusterInfo, ns: str, selector: str = f"localattn.dev/deployment={APP}"
) -> list[dict[str, Any]]:
    items = kubectl_json("get", "pods", "-n", ns, "-l", selector, kubeconfig=cluster.kubeconfig)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def health(ip: str, port: int = PORT) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def container_record(cluster: ClusterInfo, pod: dict[str, Any], container: str = "vllm") -> procs.ProcRecord:
    record = procs.load(pods_dir(cluster.state_dir), record_name(pod["metadata"]["uid"], container))
    assert record is not None, f"no process recorded for {pod['metadata']['name']}"
    return record


def session_pids(record: procs.ProcRecord) -> list[int]:
    return procs.session_members(record)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def serving(cluster: ClusterInfo, ns: str) -> dict[str, Any]:
    """The 2-replica vLLM Deployment, Ready; readiness sampled during start-up to prove it follows /health."""
    children = rendered_vllm(ns, replicas=2)
    (deployment,) = [c["metadata"]["name"] for c in children if c["kind"] == "Deployment"]
    apply(cluster, ns, *model_volume(ns), *children)
    created = time.monotonic()
    samples: list[tuple[str, bool, bool]] = []
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        current = pods(cluster, ns)
        for pod in current:
            ip = pod.get("status", {}).get("podIP")
            if ip:
                ready = is_ready(pod)
                samples.append((pod["metadata"]["name"], ready, health(ip)))
        if len(current) == 2 and all(is_ready(p) for p in current):
            break
        time.sleep(1.0)
    else:
        raise TimeoutError(
            f"vLLM pods not Ready: {json.dumps([p.get('status') for p in pods(cluster, ns)])[:3000]}"
        )
    return {
        "samples": samples,
        "seconds_to_ready": time.monotonic() - created,
        "pods": pods(cluster, ns),
        "deployment": deployment,
    }


def test_replicas_become_ready_only_once_health_answers(
    cluster: ClusterInfo, ns: str, serving: dict[str, Any]
) -> None:
    samples = serving["samples"]
    assert any(not ready for _, ready, _ in samples), "pods were never seen starting (Ready at once?)"
    assert not [s for s in samples if s[1] and not s[2]], "a pod reported Ready while /health did not answer"
    ready_pods = serving["pods"]
    ips = [p["status"]["podIP"] for p in ready_pods]
    assert len(set(ips)) == 2 and all(ip.startswith("127.1.") for ip in ips)
    for ip in ips:
        assert health(ip)
        # Listening on its own pod IP only: the same port on another loopback address refuses.
        node_prefix = ip.rsplit(".", 1)[0]
        for other in (f"{node_prefix}.250", "127.0.0.1"):
            with pytest.raises(OSError), socket.create_connection((other, PORT), timeout=2):
                pass
    for pod in ready_pods:
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["started"] and "running" in status["state"]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    rss = [procs.session_rss(container_record(cluster, p)) / 2**30 for p in ready_pods]
    print(
        f"\n2 tiny-model pods Ready {serving['seconds_to_ready']:.0f} s after apply; RSS {rss[0]:.2f}, {rss[1]:.2f} GiB"
    )


def test_killed_vllm_process_restarts_and_is_ready_again(
    cluster: ClusterInfo, ns: str, serving: dict[str, Any]
) -> None:
    victim = sorted(pods(cluster, ns), key=lambda p: p["metadata"]["name"])[0]
    name = victim["metadata"]["name"]
    record = container_record(cluster, victim)
    session = session_pids(record)
    assert len(session) > 1, "vLLM runs its engine in a child process"
    os.kill(record.pid, signal.SIGKILL)

    def restarted_and_ready() -> dict[str, Any] | None:
        pod = kubectl_json("get", "pod", name, "-n", ns, kubeconfig=cluster.kubeconfig)
        (status,) = pod["status"]["containerStatuses"]
        return pod if status["restartCount"] == 1 and is_ready(pod) else None

    pod = wait_for(restarted_and_ready, timeout=300, interval=1, message=f"{name} restarted and Ready")
    assert pod is not None
    (status,) = pod["status"]["containerStatuses"]
    # SIGKILL, seen by the agent that started the process (an adopted one's exit status is unknowable).
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert container_record(cluster, pod).pid != record.pid
    assert not any(pid_alive(pid) for pid in session), "the killed container's other processes are gone too"
    assert health(pod["status"]["podIP"])


def test_agent_restart_adopts_running_pods(cluster: ClusterInfo, ns: str, serving: dict[str, Any]) -> None:
    current = pods(cluster, ns)
    before = {p["metadata"]["name"]: container_record(cluster, p).pid for p in current}
    restarts_before = {
        p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in current
    }
    agent = procs.load(cluster.state_dir, "node-agent")
    assert agent is not None
    os.kill(agent.pid, signal.SIGTERM)
    wait_for(lambda: not procs.alive(agent), timeout=30, message="node agent stopped")
    assert all(pid_alive(pid) for pid in before.values()), "stopping the agent stopped pods"
    again = up(
        cluster.state_dir,
        nodes=2,
        gpus_per_node=2,
        node_mode="process",
        use_existing=False,
        models=("tiny-random",),
    )
    assert again.pids["node-agent"] != agent.pid
    time.sleep(8)  # a few probe periods of the new agent
    after = pods(cluster, ns)
    assert {p["metadata"]["name"]: container_record(cluster, p).pid for p in after} == before
    assert all(is_ready(p) for p in after)
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in after}
    assert restarts == restarts_before, "adopting restarted a container"


def test_a_command_that_fails_at_start_goes_into_crash_loop_back_off(cluster: ClusterInfo, ns: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fails", "labels": {"app": "fails"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo no model here >&2; exit 2"],
                }
            ]
        },
    }
    apply(cluster, ns, pod)

    def crash_looping() -> str | None:
        table = kubectl("get", "pod", "fails", "-n", ns, kubeconfig=cluster.kubeconfig).stdout
        return table if "CrashLoopBackOff" in table else None

    table = wait_for(crash_looping, timeout=60, interval=0.5, message="CrashLoopBackOff in kubectl get pods")
    assert table is not None
    assert "0/1" in table
    status = kubectl_json("get", "pod", "fails", "-n", ns, kubeconfig=cluster.kubeconfig)["status"]
    (container,) = status["containerStatuses"]
    assert container["restartCount"] >= 1
    assert container["lastState"]["terminated"]["exitCode"] == 2
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    kubectl("delete", "pod", "fails", "-n", ns, "--wait=false", kubeconfig=cluster.kubeconfig)


def test_the_agent_never_runs_more_gpus_than_a_node_has(cluster: ClusterInfo, ns: str) -> None:
    """Bound by hand (no scheduler), a pod asking for more GPUs than its node has is rejected, as by kubelet."""
    node = kubectl_json("get", "node", "localattn-gpu-0", kubeconfig=cluster.kubeconfig)
    too_many = int(node["status"]["capacity"]["nvidia.com/gpu"]) + 1
    greedy = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy"},
        "spec": {
            "nodeName": "localattn-gpu-0",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sleep", "600"],
                    "resources": {"limits": {"nvidia.com/gpu": str(too_many)}},
                }
            ],
        },
    }
    apply(cluster, ns, greedy)

    def rejected() -> dict[str, Any] | None:
        status = kubectl_json("get", "pod", "greedy", "-n", ns, kubeconfig=cluster.kubeconfig).get(
            "status", {}
        )
        return status if status.get("phase") == "Failed" else None

    status = wait_for(rejected, timeout=30, message="greedy pod rejected")
    assert status is not None
    assert status["reason"] == "OutOfnvidia.com/gpu" and f"requested: {too_many}" in status["message"]
    uid = kubectl_json("get", "pod", "greedy", "-n", ns, kubeconfig=cluster.kubeconfig)["metadata"]["uid"]
    assert procs.load(pods_dir(cluster.state_dir), record_name(uid, "main")) is None, "it never ran"


def test_deleting_a_pod_stops_its_processes(cluster: ClusterInfo, ns: str, serving: dict[str, Any]) -> None:
    before = {p["metadata"]["name"]: session_pids(container_record(cluster, p)) for p in pods(cluster, ns)}
    assert len(before) == 2 and all(before.values())
    kubectl(
        "scale", "deployment", serving["deployment"], "-n", ns, "--replicas=1", kubeconfig=cluster.kubeconfig
    )
    # The ReplicaSet deletes one of the two (grace 30 s): SIGTERM, vLLM shuts down, the pod goes away.
    wait_for(lambda: len(pods(cluster, ns)) == 1, timeout=60, message="scaled to 1")
    (kept,) = [p["metadata"]["name"] for p in pods(cluster, ns)]
    (deleted,) = set(before) - {kept}
    wait_for(
        lambda: (
            kubectl("get", "pod", deleted, "-n", ns, kubeconfig=cluster.kubeconfig, check=False).returncode
        ),
        timeout=60,
        message=f"{deleted} gone from the API",
    )
    assert not [pid for pid in before[deleted] if pid_alive(pid)], "a deleted pod's process still runs"
    assert all(pid_alive(pid) for pid in before[kept][:1]), "the other pod was left alone"


def test_dev_down_leaves_no_pod_process(cluster: ClusterInfo, ns: str, serving: dict[str, Any]) -> None:
    records = procs.load_all(pods_dir(cluster.state_dir))
    pids = [pid for record in records.values() for pid in session_pids(record)]
    assert pids, "something still runs before down"
    down(cluster.state_dir)
    assert not [pid for pid in pids if pid_alive(pid)]
    assert procs.load_all(pods_dir(cluster.state_dir)) == {}
