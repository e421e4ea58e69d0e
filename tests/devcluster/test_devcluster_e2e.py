"""The dev cluster end to end: real etcd/apiserver/controller-manager/scheduler plus the node agent.

One cluster per module in a temporary state dir (so `down` can be tested without touching anyone's
cluster); tests run in file order and share it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev import procs
from localattn_dev.components import Layout
from localattn_dev.controlplane import PYTHON_COMPONENTS, ClusterInfo, code_fingerprint, down, status, up
from localattn_dev.testing import kubectl, kubectl_json, temp_namespace, wait_for

pytestmark = pytest.mark.e2e
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    state_dir = tmp_path_factory.mktemp("devcluster")
    info = up(state_dir, nodes=2, gpus_per_node=4, use_existing=False)
    yield info
    down(state_dir, purge=True)


@pytest.fixture(scope="module")
def ns(cluster: ClusterInfo) -> Iterator[str]:
    with temp_namespace(cluster.kubeconfig, prefix="dev-e2e-") as name:
        yield name


def apply(cluster: ClusterInfo, ns: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(manifest))


def gpu_deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    container = {"name": "server", "image": "vllm/vllm-openai:cpu", "resources": {"limits": {GPU: str(gpus)}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def pods(cluster: ClusterInfo, ns: str, app: str) -> list[dict[str, Any]]:
    return list(
        kubectl_json("get", "pods", "-n", ns, "-l", f"app={app}", kubeconfig=cluster.kubeconfig)["items"]
    )


def running_and_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def test_up_is_idempotent_and_honours_a_live_kubeconfig(
    cluster: ClusterInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cluster.started and not cluster.external
    assert cluster.server.startswith("https://127.0.0.1:")
    again = up(cluster.state_dir, use_existing=False)
    assert (again.started, again.server, again.pids) == (False, cluster.server, cluster.pids)
    st = status(cluster.state_dir)
    assert st["ready"] and all(c["running"] for c in st["components"].values())
    assert set(st["components"]) == set(cluster.pids) == {
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent",
        "haproxy", "prometheus", "dataplane",
    }  # fmt: skip

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    other = up(tmp_path / "other")
    assert other.external and not other.started and other.kubeconfig == cluster.kubeconfig
    assert procs.load_all(tmp_path / "other") == {}  # started nothing there


def test_nodes_are_ready_with_gpu_capacity(cluster: ClusterInfo) -> None:
    nodes = kubectl_json("get", "nodes", kubeconfig=cluster.kubeconfig)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(by_name) == set(cluster.nodes) == {"localattn-gpu-0", "localattn-gpu-1"}
    for node in by_name.values():
        assert node["status"]["allocatable"][GPU] == "4"
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert not node["spec"].get("taints")
    lease = kubectl_json(
        "get", "lease", "localattn-gpu-0", "-n", "kube-node-lease", kubeconfig=cluster.kubeconfig
    )
    assert lease["spec"]["holderIdentity"] == "localattn-gpu-0"


def test_gpu_deployment_runs_and_ready(cluster: ClusterInfo, ns: str) -> None:
    apply(cluster, ns, gpu_deployment("served", replicas=3, gpus=1))
    wait_for(
        lambda: len([p for p in pods(cluster, ns, "served") if running_and_ready(p)]) == 3,
        timeout=30,
        message="3 served pods Running and Ready",
    )
    ips = {p["status"]["podIP"] for p in pods(cluster, ns, "served")}
    assert len(ips) == 3 and all(ip.startswith("127.1.") for ip in ips)
    wait_for(
        lambda: (
            kubectl_json("get", "deployment", "served", "-n", ns, kubeconfig=cluster.kubeconfig)[
                "status"
            ].get("availableReplicas")
            == 3
        ),
        timeout=20,
        message="deployment available",
    )


def test_pod_needing_more_gpus_than_any_node_stays_pending(cluster: ClusterInfo, ns: str) -> None:
    apply(cluster, ns, gpu_deployment("too-big", replicas=1, gpus=5))

    def unschedulable() -> bool:
        [pod] = pods(cluster, ns, "too-big")
        cond = {c["type"]: c for c in pod["status"].get("conditions", [])}.get("PodScheduled", {})
        return cond.get("status") == "False" and cond.get("reason") == "Unschedulable"

    wait_for(unschedulable, timeout=30, message="too-big pod Unschedulable")
    [pod] = pods(cluster, ns, "too-big")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    assert "nvidia.com/gpu" in {c["type"]: c for c in pod["status"]["conditions"]}["PodScheduled"]["message"]


def test_scaling_down_removes_pods(cluster: ClusterInfo, ns: str) -> None:
    kubectl("scale", "deployment", "served", "--replicas=1", "-n", ns, kubeconfig=cluster.kubeconfig)
    wait_for(lambda: len(pods(cluster, ns, "served")) == 1, timeout=30, message="scaled down to 1 pod")


def test_custom_resource_write_does_not_crash_the_apiserver(cluster: ClusterInfo, ns: str) -> None:
    """Regression test for the reflect2/Go 1.18 `mapiterinit` fault, which hit the first CR write."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.dev.localattn.io"},
        "spec": {
            "group": "dev.localattn.io",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }],
        },
    }  # fmt: skip
    kubectl("apply", "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(crd))
    wait_for(
        lambda: (
            kubectl("get", "widgets", "-n", ns, kubeconfig=cluster.kubeconfig, check=False).returncode == 0
        ),
        timeout=30,
        message="CRD established",
    )
    widget = {
        "apiVersion": "dev.localattn.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"labels": {"a": "1", "b": "2"}, "nested": {"map": {"x": [1, 2, {"y": "z"}]}}},
    }
    apply(cluster, ns, widget)
    kubectl(
        "patch",
        "widget",
        "w",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"labels": {"c": "3"}}}',
        kubeconfig=cluster.kubeconfig,
    )
    got = kubectl_json("get", "widget", "w", "-n", ns, kubeconfig=cluster.kubeconfig)
    assert got["spec"]["labels"] == {"a": "1", "b": "2", "c": "3"}
    assert procs.alive(procs.load_all(cluster.state_dir)["kube-apiserver"])


def test_apiserver_and_agent_restarts_are_survived(cluster: ClusterInfo, ns: str) -> None:
    assert procs.stop(cluster.state_dir, "kube-apiserver") and procs.stop(cluster.state_dir, "node-agent")
    again = up(cluster.state_dir, use_existing=False)
    assert again.started and again.server == cluster.server
    changed = {name for name, pid in again.pids.items() if cluster.pids[name] != pid}
    assert changed == {"kube-apiserver", "node-agent"}  # only what was down
    kubectl("scale", "deployment", "served", "--replicas=3", "-n", ns, kubeconfig=cluster.kubeconfig)
    apply(cluster, ns, gpu_deployment("after-restart", replicas=1, gpus=2))
    wait_for(
        lambda: (
            sum(
                running_and_ready(p) for p in pods(cluster, ns, "served") + pods(cluster, ns, "after-restart")
            )
            == 4
        ),
        timeout=60,
        message="new pods Running after the restarts",
    )
    all_pods = kubectl_json("get", "pods", "-n", ns, kubeconfig=cluster.kubeconfig)["items"]
    ips = [p["status"]["podIP"] for p in all_pods if p["status"].get("podIP")]
    assert len(ips) == len(set(ips)) == 4  # the restarted agent did not hand out a held IP again


def test_a_cluster_started_by_other_code_restarts_its_python_components(cluster: ClusterInfo) -> None:
    """The node agent and the data plane run this checkout's Python: a cluster left running by older code (the
    shared test cluster, a developer's) restarts them on `up`, and nothing else."""
    state_file = Layout(cluster.state_dir).state_file
    before = up(cluster.state_dir, use_existing=False)
    state = json.loads(state_file.read_text())
    assert state["code"] == code_fingerprint()
    state_file.write_text(json.dumps({**state, "code": "older-code"}))
    again = up(cluster.state_dir, use_existing=False)
    changed = {name for name, pid in again.pids.items() if before.pids[name] != pid}
    assert changed == set(PYTHON_COMPONENTS), changed
    assert json.loads(state_file.read_text())["code"] == code_fingerprint()
    assert not up(cluster.state_dir, use_existing=False).started  # same code: nothing restarts


def test_down_stops_everything_it_started_and_nothing_else(cluster: ClusterInfo) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        records = procs.load_all(cluster.state_dir)
        stopped = down(cluster.state_dir)
        assert set(stopped) == set(records)
        assert not any(procs.alive(r) for r in records.values())
        assert bystander.poll() is None  # not ours to stop
        st = status(cluster.state_dir)
        assert not st["ready"] and st["components"] == {}
        assert down(cluster.state_dir) == []  # idempotent
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()
