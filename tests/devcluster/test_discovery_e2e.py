"""Prometheus discovers a pod from the cluster and scrapes it: the real apiserver, node agent, data-plane
controller (pod watch -> file SD) and Debian's Prometheus.

The pod is an ordinary pod object (the node agent gives it a 127.1.x.y IP and marks it Running); a local
HTTP server on that IP serves its metrics, standing in for the container.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
import urllib.request
from typing import Any

import pytest

from localattn_dev.controlplane import ClusterInfo
from localattn_dev.devurls import url_of
from localattn_dev.testbackend import Backend
from localattn_dev.testing import ensure_cluster, kubectl, kubectl_json, temp_namespace, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> ClusterInfo:
    return ensure_cluster(use_existing=False)


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_an_annotated_pod_is_discovered_and_scraped_with_the_convention_labels(cluster: ClusterInfo) -> None:
    prometheus = url_of("prometheus", state_dir=cluster.state_dir)
    assert prometheus is not None and prometheus.startswith("http://127.0.0.1:")
    with temp_namespace(cluster.kubeconfig, prefix="discovery-e2e-") as ns:
        # Any port works for the stand-in server; the annotation says which one to scrape.
        port = free_port("127.0.0.1")
        labels = {"localattn.dev/deployment": "chat", "localattn.dev/revision": "r1", "localattn.dev/track": "stable"}
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "chat-0", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "server", "image": "vllm", "ports": [{"name": "http", "containerPort": port}]}]},
        }
        kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(pod))
        running = wait_for(
            lambda: (lambda p: p if p["status"].get("podIP") and p["status"].get("phase") == "Running" else None)(
                kubectl_json("get", "pod", "chat-0", "-n", ns, kubeconfig=cluster.kubeconfig)
            ),
            timeout=30,
            message="the pod to run",
        )
        ip, node = running["status"]["podIP"], running["spec"]["nodeName"]
        with Backend(ip, port) as backend:
            selector = f'pod="chat-0",namespace="{ns}",lad="chat",revision="r1",track="stable"'
            up = wait_for(lambda: query(prometheus, f"up{{{selector}}} == 1"), timeout=30, message="up == 1")
            assert up[0]["metric"] == {
                "__name__": "up", "job": "localattn-pods", "instance": f"{ip}:{port}", "namespace": ns,
                "pod": "chat-0", "node": node, "lad": "chat", "revision": "r1", "track": "stable",
            }  # fmt: skip
            assert wait_for(lambda: query(prometheus, f"testbackend_requests_total{{{selector}}}"), timeout=10)
            assert backend.served >= 1
        # The pod deleted: its target goes.
        assert not _target_gone(prometheus, ns)
        kubectl("delete", "pod", "chat-0", "-n", ns, "--wait=false", kubeconfig=cluster.kubeconfig)
        wait_for(lambda: _target_gone(prometheus, ns), timeout=30, message="the target to be dropped")


def _target_gone(prometheus: str, ns: str) -> bool:
    with urllib.request.urlopen(f"{prometheus}/api/v1/targets?state=active", timeout=5) as response:
        targets = json.loads(response.read())["data"]["activeTargets"]
    return not any(t["labels"].get("namespace") == ns for t in targets)


def test_an_operator_target_file_is_scraped(cluster: ClusterInfo) -> None:
    """Whoever runs the operator locally may drop a file-SD target file for its /metrics (optional job)."""
    from localattn_dev.prometheus import OPERATOR_JOB, PrometheusFiles

    prometheus = url_of("prometheus", state_dir=cluster.state_dir)
    assert prometheus is not None
    port = free_port("127.0.0.1")
    target_file = PrometheusFiles(cluster.state_dir).targets / f"operator-test-{port}.json"
    with Backend("127.0.0.1", port):
        target_file.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"role": "test"}}]))
        try:
            selector = f'job="{OPERATOR_JOB}",instance="127.0.0.1:{port}"'
            wait_for(lambda: query(prometheus, f"up{{{selector}}} == 1"), timeout=30, message="the operator job")
        finally:
            target_file.unlink()
