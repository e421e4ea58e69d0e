"""HTTPRoutes in the dev cluster's service proxy for real: apiserver (with the dev cluster's HTTPRoute schema),
the data-plane controller and HAProxy, with local HTTP servers as the backendRefs' endpoints (no pods).

Two selector-less Services (`stable`: two endpoints, `canary`: one) as weighted backendRefs of one HTTPRoute:
requests through the route's own address split by backendRef weight (not by endpoint count), follow a weight
change within about a second, and a request in flight survives it. (That a weight change is a runtime
`set weight` and no reload is tested on the pure plan, test_routemodel.py: in a shared cluster another
test's Services coming and going reload HAProxy at any time.)
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from localattn_cli.main import main as cli_main
from localattn_dev.controlplane import ClusterInfo
from localattn_dev.devurls import url_of
from localattn_dev.testbackend import Backend
from localattn_dev.testing import apply_manifests, ensure_cluster, temp_namespace, wait_for

pytestmark = pytest.mark.e2e
STABLE = ("127.1.251.2", "127.1.251.3")
CANARY = "127.1.251.4"


@pytest.fixture(scope="module")
def cluster() -> ClusterInfo:
    return ensure_cluster(use_existing=False)


@pytest.fixture(scope="module")
def ns(cluster: ClusterInfo) -> Iterator[str]:
    with temp_namespace(cluster.kubeconfig, prefix="route-e2e-") as name:
        yield name


def service_with_endpoints(name: str, ips: list[str], port: int) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-manual", "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
         "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    ]  # fmt: skip


def http_route(stable: int, canary: int) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "llm"},
            "spec": {"parentRefs": [{"name": "gw"}],
                     "rules": [{"backendRefs": [{"name": "stable", "port": 8000, "weight": stable},
                                                {"name": "canary", "port": 8000, "weight": canary}]}]}}


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode().strip())


def split(url: str, n: int) -> Counter[str]:
    """Requests per arm (the backends answer their own address)."""
    return Counter("canary" if get(url).startswith(CANARY) else "stable" for _ in range(n))


def test_route_traffic_splits_by_backendref_weight_and_follows_a_change_at_runtime(
    cluster: ClusterInfo, ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind((STABLE[0], 0))
        port = int(s.getsockname()[1])
    with Backend(STABLE[0], port), Backend(STABLE[1], port), Backend(CANARY, port):
        apply_manifests(cluster.kubeconfig, ns, *service_with_endpoints("stable", list(STABLE), port),
              *service_with_endpoints("canary", [CANARY], port), http_route(75, 25))
        url = wait_for(lambda: url_of("httproute/llm", ns, cluster.state_dir), timeout=15,
                       message="a proxy address for the HTTPRoute")
        assert url.startswith("http://127.2.") and url.endswith(":8000")
        assert url != url_of("stable", ns, cluster.state_dir)  # an address of its own
        with pytest.raises(SystemExit) as cli_exit:
            cli_main(["dev", "--state-dir", str(cluster.state_dir), "url", "httproute/llm", "-n", ns])
        assert cli_exit.value.code == 0 and capsys.readouterr().out.strip() == url
        wait_for(lambda: split(url, 8)["canary"] > 0, timeout=15, message="the route to reach the canary")
        # Weighted round robin: 75/25 by backendRef, although stable has two endpoints and canary one.
        assert abs(split(url, 80)["canary"] - 20) <= 3  # smooth weighted round robin: within a few of 20

        # A weight change: applied at runtime within about a second; a request in flight is not dropped.
        slow: dict[str, Any] = {}
        in_flight = threading.Thread(target=lambda: slow.update(answer=get(f"{url}/slow?seconds=3", timeout=20)))
        in_flight.start()
        time.sleep(0.3)
        changed = time.monotonic()
        apply_manifests(cluster.kubeconfig, ns, http_route(25, 75))
        wait_for(lambda: split(url, 8)["canary"] >= 5, timeout=5, interval=0.05, message="the new weights served")
        took = time.monotonic() - changed
        assert took < 2.0, took  # kubectl apply itself is most of it
        assert abs(split(url, 80)["canary"] - 60) <= 3
        # weight 0: no traffic at all to that backendRef
        apply_manifests(cluster.kubeconfig, ns, http_route(1, 0))
        wait_for(lambda: split(url, 8) == {"stable": 8}, timeout=5, interval=0.05, message="weight 0 unrouted")
        in_flight.join(timeout=20)
        assert slow.get("answer", "").startswith((*STABLE, CANARY)), slow
