"""The dev cluster's service proxy for real: apiserver, the data-plane controller and HAProxy.

A selector-less Service with a hand-written EndpointSlice pointing at local HTTP servers on 127.1.250.x
(no pod runtime involved; Endpoints objects cannot hold loopback addresses, EndpointSlices can): traffic
through the Service's 127.2.x.y address reaches the ready endpoints, follows an endpoint change within
about a second, and a request in flight survives both a runtime reconfiguration
and a seamless reload (a new Service added meanwhile).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_cli.main import main as cli_main
from localattn_dev.controlplane import ClusterInfo
from localattn_dev.devurls import url_of
from localattn_dev.haproxycfg import ProxyFiles
from localattn_dev.serviceproxy import worker_pid
from localattn_dev.testbackend import Backend
from localattn_dev.testing import ensure_cluster, kubectl, temp_namespace, wait_for

pytestmark = pytest.mark.e2e
BACKENDS = ("127.1.250.2", "127.1.250.3")


@pytest.fixture(scope="module")
def cluster() -> ClusterInfo:
    """The shared test cluster ($LOCALATTN_TEST_DEV_DIR), ours even when $KUBECONFIG names another: the
    proxy's files are read from its state dir."""
    return ensure_cluster(use_existing=False)


@pytest.fixture(scope="module")
def ns(cluster: ClusterInfo) -> Iterator[str]:
    with temp_namespace(cluster.kubeconfig, prefix="proxy-e2e-") as name:
        yield name


@pytest.fixture(scope="module")
def backends() -> Iterator[list[Backend]]:
    port = free_port_on(BACKENDS)
    with Backend(BACKENDS[0], port) as a, Backend(BACKENDS[1], port) as b:
        yield [a, b]


def free_port_on(addresses: tuple[str, ...]) -> int:
    import socket

    with socket.socket() as s:
        s.bind((addresses[0], 0))
        return int(s.getsockname()[1])


def apply(cluster: ClusterInfo, ns: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(manifest))


def selectorless_service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]},
    }


def endpoints(name: str, ready: list[str], port: int, not_ready: tuple[str, ...] = ()) -> dict[str, Any]:
    """A hand-written EndpointSlice for Service `name` (what the EndpointSlice controller writes for pods)."""
    return {
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-manual",
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "tests"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ready]
        + [{"addresses": [ip], "conditions": {"ready": False}} for ip in not_ready],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode().strip())


def answers(url: str, n: int) -> list[str]:
    return [get(url) for _ in range(n)]


def test_service_traffic_follows_ready_endpoints_and_survives_reconfiguration(
    cluster: ClusterInfo, ns: str, backends: list[Backend], capsys: pytest.CaptureFixture[str]
) -> None:
    port = backends[0].port
    a, b = (f"{be.address}:{port}" for be in backends)
    apply(cluster, ns, selectorless_service("echo", 8080))
    # One ready address and one not ready: only the ready one may get traffic.
    apply(cluster, ns, endpoints("echo", [BACKENDS[0]], port, not_ready=(BACKENDS[1],)))
    url = wait_for(lambda: url_of("echo", ns, cluster.state_dir), timeout=15, message="a proxy address for echo")
    assert url.startswith("http://127.2.") and url.endswith(":8080")
    with pytest.raises(SystemExit) as cli_exit:
        cli_main(["dev", "--state-dir", str(cluster.state_dir), "url", "echo", "-n", ns])
    assert cli_exit.value.code == 0 and capsys.readouterr().out.strip() == url
    wait_for(lambda: get(url) == a, timeout=15, message="the proxy to answer from the ready endpoint")
    assert set(answers(url, 10)) == {a}

    # Both ready: both serve.
    apply(cluster, ns, endpoints("echo", list(BACKENDS), port))
    wait_for(lambda: set(answers(url, 6)) == {a, b}, timeout=5, message="traffic on both endpoints")

    # A long request in flight on the endpoint about to be removed, then a runtime change and a reload.
    files = ProxyFiles(cluster.state_dir)
    worker_before = worker_pid(files)
    slow: dict[str, Any] = {}

    def long_request() -> None:
        try:
            slow["answer"] = get(f"{url}/slow?seconds=6", timeout=30)
        except Exception as e:  # recorded, asserted below
            slow["error"] = repr(e)

    thread = threading.Thread(target=long_request)
    thread.start()
    victim = wait_for(
        lambda: next((be for be in backends if be.in_flight), None), timeout=5, message="the slow request in flight"
    )
    survivor = next(be for be in backends if be is not victim)
    removed_at = time.monotonic()
    apply(cluster, ns, endpoints("echo", [survivor.address], port))
    wait_for(
        lambda: set(answers(url, 4)) == {f"{survivor.address}:{port}"},
        timeout=5,
        interval=0.02,
        message="traffic to leave the removed endpoint",
    )
    delay = time.monotonic() - removed_at
    assert delay < 1.5, f"endpoint removal took {delay:.2f} s to take effect"
    assert worker_pid(files) == worker_before  # a runtime-API change, no reload
    assert set(answers(url, 10)) == {f"{survivor.address}:{port}"}
    served = victim.served
    assert set(answers(url, 10)) == {f"{survivor.address}:{port}"} and victim.served == served

    # A new Service: a new frontend, through a seamless reload, while the slow request still runs.
    apply(cluster, ns, selectorless_service("second", 8081))
    apply(cluster, ns, endpoints("second", [victim.address], port))
    second = wait_for(lambda: url_of("second", ns, cluster.state_dir), timeout=10, message="a proxy address for second")
    wait_for(lambda: get(second) == f"{victim.address}:{port}", timeout=10, message="the new Service to answer")
    assert worker_pid(files) != worker_before
    assert second.split(":")[1] != url.split(":")[1]  # one address per Service
    assert thread.is_alive(), "the slow request should still be in flight across the reload"
    thread.join(timeout=30)
    assert slow == {"answer": f"{victim.address}:{port}"}


def test_deleted_service_loses_its_frontend_but_keeps_its_address(cluster: ClusterInfo, ns: str, backends: list[Backend]) -> None:
    port = backends[0].port
    apply(cluster, ns, selectorless_service("gone", 8082))
    apply(cluster, ns, endpoints("gone", [BACKENDS[0]], port))
    url = wait_for(lambda: url_of("gone", ns, cluster.state_dir), timeout=10, message="a proxy address for gone")
    wait_for(lambda: get(url), timeout=10, message="gone to answer")
    kubectl("delete", "service", "gone", "-n", ns, kubeconfig=cluster.kubeconfig)
    wait_for(lambda: url_of("gone", ns, cluster.state_dir) is None, timeout=10, message="the frontend to go")
    with pytest.raises(OSError):
        get(url, timeout=2)
    allocated = json.loads(Path(ProxyFiles(cluster.state_dir).addresses).read_text())
    assert allocated[f"{ns}/gone"] == url.split("//")[1].split(":")[0]


def test_a_busy_listener_is_skipped_and_a_controller_restart_keeps_serving(
    cluster: ClusterInfo, ns: str, backends: list[Backend]
) -> None:
    import socket

    from localattn_dev import procs

    port = backends[0].port
    apply(cluster, ns, selectorless_service("busy", 8083))
    apply(cluster, ns, endpoints("busy", [BACKENDS[0]], port))
    url = wait_for(lambda: url_of("busy", ns, cluster.state_dir), timeout=10, message="a proxy address for busy")
    address = url.split("//")[1].split(":")[0]
    wait_for(lambda: get(url), timeout=10, message="busy to answer")
    with socket.socket() as squatter:  # another process takes the port the Service is about to add
        squatter.bind((address, 8084))
        squatter.listen()
        service = selectorless_service("busy", 8083)
        service["spec"]["ports"].append({"name": "other", "port": 8084, "protocol": "TCP"})
        apply(cluster, ns, service)
        apply(cluster, ns, selectorless_service("after-busy", 8085))
        apply(cluster, ns, endpoints("after-busy", [BACKENDS[1]], port))
        after = wait_for(lambda: url_of("after-busy", ns, cluster.state_dir), timeout=10, message="after-busy")
        wait_for(lambda: get(after), timeout=10, message="the next Service to answer despite the busy port")
        assert get(url) == f"{BACKENDS[0]}:{port}"
        urls = json.loads(ProxyFiles(cluster.state_dir).urls.read_text())
        assert urls[f"{ns}/busy"] == [url]  # its busy port left out, its first one kept

    # The controller restarted: HAProxy keeps serving throughout, and the new controller takes over.
    assert procs.stop(cluster.state_dir, "dataplane")
    assert get(url) == f"{BACKENDS[0]}:{port}"
    ensure_cluster(use_existing=False)
    apply(cluster, ns, endpoints("busy", [BACKENDS[1]], port))
    wait_for(lambda: get(url) == f"{BACKENDS[1]}:{port}", timeout=15, message="the restarted controller's update")
    assert get(after) == f"{BACKENDS[1]}:{port}"
