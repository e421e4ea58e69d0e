"""InferencePool backendRefs in the dev cluster's service proxy for real: apiserver (with the dev cluster's
HTTPRoute and InferencePool schemas), scheduler, the simulate node agent, the data-plane controller and HAProxy.

One HTTPRoute splits 75/25 between an InferencePool (two pods) and a selector-less Service (one hand-written
endpoint). No Endpoint Picker and no vLLM: the pool's members are real Pods, scheduled onto the fake nodes and
given their IP and Ready status by the node agent (simulate mode runs no process), and a local HTTP server
(`testbackend`) is started on each pod's IP at the pool's target port, playing the container that process
mode would run there. So the pool's endpoints come from the pods' own API state, as an Endpoint Picker's
would: the route splits by backendRef weight, the pool's share is spread over its ready pods, and a pod
turned not Ready (its status patched, as a failing readiness probe would) stops getting traffic.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from localattn_dev.controlplane import ClusterInfo
from localattn_dev.devurls import url_of
from localattn_dev.testbackend import Backend
from localattn_dev.testing import (
    apply_manifests,
    ensure_cluster,
    install_inference_pool_crd,
    kubectl,
    kubectl_json,
    temp_namespace,
    wait_for,
)

pytestmark = pytest.mark.e2e
SERVICE_IP = "127.1.252.2"
LABELS = {"app": "pool-e2e"}
POOL_CRD = "inferencepools.inference.networking.k8s.io"


@pytest.fixture(scope="module")
def cluster() -> ClusterInfo:
    info = ensure_cluster(use_existing=False)
    install_inference_pool_crd(info.kubeconfig)
    return info


@pytest.fixture(scope="module")
def ns(cluster: ClusterInfo) -> Iterator[str]:
    with temp_namespace(cluster.kubeconfig, prefix="pool-e2e-") as name:
        yield name


def member(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": LABELS},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "server", "image": "localattn/testbackend"}]}}


def ready_ips(cluster: ClusterInfo, ns: str) -> list[str] | None:
    pods = kubectl_json("get", "pods", "-n", ns, "-l", "app=pool-e2e", kubeconfig=cluster.kubeconfig)["items"]
    ips = [p["status"].get("podIP") for p in pods
           if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])]
    return sorted(ips) if len(ips) == 2 and all(ips) else None


def free_port(addresses: list[str]) -> int:
    """A port nothing listens on at any of `addresses` (the pods' and the Service endpoint's)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = int(s.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no common free port on {addresses}")


def http_route(pool: int, service: int) -> dict[str, Any]:
    refs = [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "arm", "weight": pool},
            {"name": "svc", "port": 8000, "weight": service}]
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "llm"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": refs}]}}


def answers(url: str, n: int) -> Counter[str]:
    """Which server answered each of `n` requests (a testbackend answers its own address)."""
    import urllib.request

    def one() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode().strip().rsplit(":", 1)[0])

    return Counter(one() for _ in range(n))


def set_ready(cluster: ClusterInfo, ns: str, pod: str, ready: bool) -> None:
    """Patch the pod's Ready condition, as kubelet does when a readiness probe starts failing (kubectl 1.20 has no
    `--subresource`). The simulate node agent leaves a pod it already reported alone."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        status = "True" if ready else "False"
        body = {"status": {"conditions": [{"type": "Ready", "status": status},
                                          {"type": "ContainersReady", "status": status}]}}
        client.CoreV1Api(api_client).patch_namespaced_pod_status(
            pod, ns, body, _content_type="application/strategic-merge-patch+json", _request_timeout=30)
    finally:
        api_client.close()


def test_a_route_splits_between_an_inference_pools_ready_pods_and_a_service_by_weight(
    cluster: ClusterInfo, ns: str
) -> None:
    apply_manifests(cluster.kubeconfig, ns, member("arm-a"), member("arm-b"))
    pod_ips = wait_for(lambda: ready_ips(cluster, ns), timeout=20, message="two Ready pods with IPs")
    port = free_port([*pod_ips, SERVICE_IP])
    with ExitStack() as servers:
        for address in (*pod_ips, SERVICE_IP):
            servers.enter_context(Backend(address, port))
        apply_manifests(cluster.kubeconfig, ns,
              {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": "arm"},
               "spec": {"selector": {"matchLabels": LABELS}, "targetPorts": [{"number": port}],
                        "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}},
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
               "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": port, "protocol": "TCP"}]}},
              {"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
               "metadata": {"name": "svc-manual", "labels": {"kubernetes.io/service-name": "svc"}},
               "addressType": "IPv4", "endpoints": [{"addresses": [SERVICE_IP], "conditions": {"ready": True}}],
               "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
              http_route(75, 25))  # fmt: skip
        url = wait_for(lambda: url_of("httproute/llm", ns, cluster.state_dir), timeout=15,
                       message="a proxy address for the HTTPRoute")
        assert url.startswith("http://127.2.") and url.endswith(f":{port}")  # the pool's target port: first ref
        wait_for(lambda: set(answers(url, 12)) == {*pod_ips, SERVICE_IP}, timeout=15,
                 message="both pool pods and the Service endpoint answering")
        got = answers(url, 80)
        # 75/25 by backendRef (the pool's two pods share its 75 evenly; smooth weighted round robin: exact
        # within a few requests), although the pool has two endpoints and the Service one.
        assert abs(got[SERVICE_IP] - 20) <= 3, got
        assert all(abs(got[ip] - 30) <= 3 for ip in pod_ips), got

        # A pool member turning not Ready leaves the pool; the pool keeps its 75 on the pod left.
        set_ready(cluster, ns, "arm-b", False)
        gone = kubectl_json("get", "pod", "arm-b", "-n", ns, kubeconfig=cluster.kubeconfig)["status"]["podIP"]
        wait_for(lambda: gone not in answers(url, 8), timeout=5, interval=0.05, message="the not-Ready pod left")
        got = answers(url, 80)
        assert gone not in got and abs(got[SERVICE_IP] - 20) <= 3, got
        # and weight 0 on the Service: all traffic to the pool's ready pod
        apply_manifests(cluster.kubeconfig, ns, http_route(1, 0))
        (left,) = set(pod_ips) - {gone}
        wait_for(lambda: answers(url, 8) == {left: 8}, timeout=5, interval=0.05, message="the pool alone")

        # The kind is optional: with the CRD deleted (its pools with it) the route, whose port was its first
        # backendRef's pool's, has no frontend any more, and the data plane goes on proxying Services.
        kubectl("delete", "crd", POOL_CRD, "--wait=true", kubeconfig=cluster.kubeconfig)
        try:
            wait_for(lambda: url_of("httproute/llm", ns, cluster.state_dir) is None, timeout=10,
                     message="the route's frontend gone with its pool")
            service = url_of("svc", ns, cluster.state_dir)
            assert service is not None and answers(service, 4) == {SERVICE_IP: 4}
        finally:
            install_inference_pool_crd(cluster.kubeconfig)  # left as this module found it
