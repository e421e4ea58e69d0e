"""The dev cluster's service proxy (HAProxy, fed by the data-plane controller): two figures.

    python benchmarks/serviceproxy.py [--requests 3000] [--changes 20] [--state-dir DIR]

1. Added latency per request: a plain local HTTP backend (localattn_dev.testbackend, Python's http.server
   on 127.1.251.2), requested directly and through the Service's 127.2.x.y address, interleaved (one direct,
   one proxied, ...) on one keep-alive connection each; the difference of the medians (and of p90/p99).
2. Reconfiguration delay: the Service's EndpointSlice is switched between two backends; the time from the
   start of the API write to the first response from the new backend (a client polls every ~2 ms).
3. A new Service: from its creation (its EndpointSlice already written) to the first answer on its new
   frontend, which takes a seamless HAProxy reload.

Runs on the shared test cluster ($LOCALATTN_TEST_DEV_DIR, started if needed) or --state-dir's, in its own
namespace (deleted afterwards). Prints the CPU, date and commit with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for sub in ("devcluster", "cli", "operator", "runtime"):
    sys.path.insert(0, str(ROOT / sub))

from localattn_dev.devurls import url_of  # noqa: E402
from localattn_dev.testbackend import Backend  # noqa: E402
from localattn_dev.testing import ensure_cluster, kubectl, temp_namespace, wait_for  # noqa: E402

BACKENDS = ("127.1.251.2", "127.1.251.3")
SERVICE_PORT = 8090


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    return out.stdout.strip() + ("+dirty" if dirty.strip() else "")


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def endpoint_slice(ns: str, address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "bench-manual", "namespace": ns, "labels": {"kubernetes.io/service-name": "bench"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def timed_get(conn: http.client.HTTPConnection, path: str = "/") -> tuple[float, str]:
    start = time.perf_counter()
    conn.request("GET", path)
    body = conn.getresponse().read().decode().strip()
    return time.perf_counter() - start, body


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if p < 100 else max(values)


def added_latency(direct: tuple[str, int], proxied: tuple[str, int], requests: int) -> dict[str, float]:
    a = http.client.HTTPConnection(*direct, timeout=5)
    b = http.client.HTTPConnection(*proxied, timeout=5)
    for _ in range(50):  # warm both paths (connections, HAProxy's server-side keep-alive)
        timed_get(a)
        timed_get(b)
    direct_s: list[float] = []
    proxied_s: list[float] = []
    for i in range(requests):
        order = ((a, direct_s), (b, proxied_s)) if i % 2 == 0 else ((b, proxied_s), (a, direct_s))
        for conn, sink in order:
            sink.append(timed_get(conn)[0])
    a.close()
    b.close()
    result = {"paired_median_ms": statistics.median(q - d for q, d in zip(proxied_s, direct_s, strict=True)) * 1e3}
    for p in (50, 90, 99):
        d, q = percentile(direct_s, p) * 1e3, percentile(proxied_s, p) * 1e3
        result[f"direct_p{p}_ms"], result[f"proxied_p{p}_ms"], result[f"added_p{p}_ms"] = d, q, q - d
    return result


def reconfiguration_delays(api: Any, ns: str, url: tuple[str, int], backends: list[Backend], changes: int) -> list[float]:
    path = f"/apis/discovery.k8s.io/v1beta1/namespaces/{ns}/endpointslices/bench-manual"
    delays = []
    for i in range(changes):
        target = backends[(i + 1) % 2]
        expected = f"{target.address}:{target.port}"
        body = {"endpoints": [{"addresses": [target.address], "conditions": {"ready": True}}]}
        params = api.param_serialize(
            "PATCH", path, body=body, header_params={"Content-Type": "application/merge-patch+json"},
            auth_settings=["BearerToken"],
        )  # fmt: skip
        start = time.perf_counter()
        response = api.call_api(*params, _request_timeout=10)
        assert response.status == 200, response.read()
        while True:
            conn = http.client.HTTPConnection(*url, timeout=5)  # a new connection: the balancer's choice now
            try:
                if timed_get(conn)[1] == expected:
                    break
            finally:
                conn.close()
            time.sleep(0.002)
        delays.append(time.perf_counter() - start)
        time.sleep(0.3)
    return delays


def new_service_delays(api: Any, ns: str, state_dir: Path, backend: Backend, count: int) -> list[float]:
    """Service created (its EndpointSlice already there) -> its frontend answers: a seamless reload."""
    delays = []
    for i in range(count):
        name = f"new-{i}"
        slice_ = endpoint_slice(ns, backend.address, backend.port)
        slice_["metadata"] = {"name": f"{name}-manual", "labels": {"kubernetes.io/service-name": name}}
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                   "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP"}]}}  # fmt: skip
        _post(api, f"/apis/discovery.k8s.io/v1beta1/namespaces/{ns}/endpointslices", slice_)
        start = time.perf_counter()
        _post(api, f"/api/v1/namespaces/{ns}/services", service)
        while True:
            url = url_of(name, ns, state_dir)
            if url is not None:
                host, port = url.removeprefix("http://").split(":")
                try:
                    conn = http.client.HTTPConnection(host, int(port), timeout=2)
                    if timed_get(conn)[1]:
                        break
                except OSError:
                    pass
            time.sleep(0.005)
        delays.append(time.perf_counter() - start)
    return delays


def _post(api: Any, path: str, body: dict[str, Any]) -> None:
    params = api.param_serialize("POST", path, body=body, auth_settings=["BearerToken"])
    response = api.call_api(*params, _request_timeout=10)
    assert response.status == 201, response.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--services", type=int, default=5)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()

    from kubernetes import config

    from localattn_dev.controlplane import up

    info = up(args.state_dir, use_existing=False) if args.state_dir else ensure_cluster(use_existing=False)
    api = config.new_client_from_config(config_file=str(info.kubeconfig))
    port = free_port(BACKENDS[0])
    with temp_namespace(info.kubeconfig, prefix="bench-proxy-") as ns, Backend(BACKENDS[0], port) as first, Backend(
        BACKENDS[1], port
    ) as second:
        service = {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench", "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": port, "protocol": "TCP"}]},
        }  # fmt: skip
        for manifest in (service, endpoint_slice(ns, first.address, port)):
            kubectl("apply", "-f", "-", kubeconfig=info.kubeconfig, input=json.dumps(manifest))
        url = wait_for(lambda: url_of("bench", ns, info.state_dir), timeout=15, message="the proxy address")
        host, proxied_port = url.removeprefix("http://").split(":")
        proxied = (host, int(proxied_port))
        wait_for(lambda: timed_get(http.client.HTTPConnection(*proxied, timeout=2))[1], timeout=15, message="proxy")
        latency = added_latency((first.address, port), proxied, args.requests)
        delays = reconfiguration_delays(api, ns, proxied, [first, second], args.changes)
        reloads = new_service_delays(api, ns, info.state_dir, first, args.services)

    print(f"service proxy benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  commit {commit()}")
    print(f"cpu: {cpu_model()} ({len(__import__('os').sched_getaffinity(0))} cores)  haproxy: "
          + subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0])  # fmt: skip
    print(f"\nadded latency per request ({args.requests} interleaved pairs, keep-alive, GET of a 20-byte body):")
    print(f"{'':>10}{'direct':>10}{'proxied':>10}{'added':>10}   (ms)")
    for p in (50, 90, 99):
        row = (latency[f"direct_p{p}_ms"], latency[f"proxied_p{p}_ms"], latency[f"added_p{p}_ms"])
        print(f"{'p' + str(p):>10}" + "".join(f"{v:>10.3f}" for v in row))
    print(f"median of the per-pair differences: {latency['paired_median_ms']:.3f} ms")
    print(f"\nreconfiguration delay, EndpointSlice write -> first answer from the new endpoint ({args.changes} changes):")
    ms = sorted(d * 1e3 for d in delays)
    print(f"  median {statistics.median(ms):.0f} ms, p90 {percentile(ms, 90):.0f} ms, max {ms[-1]:.0f} ms")
    ms = sorted(d * 1e3 for d in reloads)
    print(f"\nnew Service -> its frontend answers (seamless reload, {args.services} Services):")
    print(f"  median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
