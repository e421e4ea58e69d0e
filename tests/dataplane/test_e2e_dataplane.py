"""The data plane end to end: a LocalAttnDeployment served by real vLLM CPU pods (node agent process mode),
reached through the Service's HAProxy address, loaded by `localattn load`, and measured by Prometheus.

One cluster of our own (process mode), the operator as a real process (`localattn operator run`), one LAD
with 2 replicas of the tiny random model. vLLM start-up is the cost (~1-2 min for both pods here), so the
checks share one module-scoped deployment and run in file order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev.controlplane import ClusterInfo
from localattn_dev.devurls import url_of
from localattn_dev.testing import (
    install_lad_crd,
    kubectl,
    kubectl_json,
    model_volume,
    process_cluster,
    running_operator,
    temp_namespace,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
LAD = "tiny"
PORT = 8000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    with process_cluster(tmp_path_factory.mktemp("dataplane"), nodes=2, gpus_per_node=2, models=("tiny-random",)) as info:
        yield info


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    install_lad_crd(cluster.kubeconfig)
    with running_operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log") as proc:
        yield proc


def lad(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "localattn.dev/v1alpha1",
        "kind": "LocalAttnDeployment",
        "metadata": {"name": LAD},
        "spec": {
            "replicas": replicas,
            "model": {"uri": "pvc://models/tiny-random", "servedModelName": LAD},
            "runtime": {
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
        },
    }


def ready_pods(cluster: ClusterInfo, ns: str) -> list[dict[str, Any]]:
    items = kubectl_json("get", "pods", "-n", ns, "-l", f"localattn.dev/deployment={LAD}",
                         kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
    return [
        p for p in items
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]  # fmt: skip


@pytest.fixture(scope="module")
def serving(cluster: ClusterInfo, operator: subprocess.Popen[bytes]) -> Iterator[dict[str, Any]]:
    with temp_namespace(cluster.kubeconfig, prefix="dataplane-e2e-") as ns:
        body = {"apiVersion": "v1", "kind": "List", "items": [*model_volume(ns), lad(replicas=2)]}
        kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(body))
        pods = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(ready_pods(cluster, ns)),
                        timeout=600, interval=2, message="both vLLM pods Ready")  # fmt: skip
        url = wait_for(lambda: url_of(LAD, ns, cluster.state_dir), timeout=30, message="the Service's proxy address")
        yield {"ns": ns, "pods": pods, "url": url}


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def successes(ip: str) -> float:
    """vLLM's own count of finished requests on one pod (`vllm:request_success_total`, all reasons)."""
    with urllib.request.urlopen(f"http://{ip}:{PORT}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


def test_completions_through_the_proxy_reach_both_pods(serving: dict[str, Any]) -> None:
    url = serving["url"]
    assert url.startswith("http://127.2.") and url.endswith(f":{PORT}")
    ips = sorted(p["status"]["podIP"] for p in serving["pods"])
    assert len(set(ips)) == 2
    before = {ip: successes(ip) for ip in ips}
    for i in range(8):
        out = post(f"{url}/v1/completions", {"model": LAD, "prompt": f"hello {i} " * 20, "max_tokens": 4})
        assert out["usage"]["completion_tokens"] == 4
    served = {ip: successes(ip) - before[ip] for ip in ips}
    assert all(n > 0 for n in served.values()), served
    assert sum(served.values()) == 8


def test_prometheus_holds_latency_series_per_pod_after_load(cluster: ClusterInfo, serving: dict[str, Any]) -> None:
    from localattn_runtime.tinymodel import random_model_dir

    load = subprocess.run(
        [sys.executable, "-m", "localattn_cli.main", "load", "--target", serving["url"], "--model", LAD,
         "--tokenizer", str(random_model_dir()), "--requests", "12", "--concurrency", "2", "--window", "64",
         "--output-len", "8"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
    assert "completed 12, errors 0" in load.stdout, load.stdout
    prometheus = url_of("prometheus", state_dir=cluster.state_dir)
    assert prometheus is not None
    promql = f'vllm:e2e_request_latency_seconds_count{{namespace="{serving["ns"]}",lad="{LAD}"}}'

    def series() -> list[dict[str, Any]] | None:
        query = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
        pods = {r["metric"].get("pod") for r in result if float(r["value"][1]) > 0}
        return result if len(pods) == 2 else None

    result = wait_for(series, timeout=60, interval=1, message="latency series for both pods")
    names = {p["metadata"]["name"] for p in serving["pods"]}
    revisions = {p["metadata"]["labels"]["localattn.dev/revision"] for p in serving["pods"]}
    assert {r["metric"]["pod"] for r in result} == names
    assert {r["metric"]["revision"] for r in result} == revisions and all(revisions)
    assert {r["metric"]["job"] for r in result} == {"localattn-pods"}


def test_a_lad_whose_pods_crash_loop_reports_degraded_with_the_reason_and_the_pod(
    cluster: ClusterInfo, operator: subprocess.Popen[bytes]
) -> None:
    """A real vLLM that exits at start (its model path does not exist): the pod goes CrashLoopBackOff on the
    node, and the LAD says so (Degraded, the reason and the pod) instead of staying Progressing forever."""
    broken = lad(replicas=1)
    broken["metadata"]["name"] = "broken"
    broken["spec"]["model"] = {"uri": "pvc://models/does-not-exist", "servedModelName": "broken"}
    with temp_namespace(cluster.kubeconfig, prefix="dataplane-crash-") as ns:
        body = {"apiVersion": "v1", "kind": "List", "items": [*model_volume(ns), broken]}
        kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(body))

        def degraded() -> dict[str, Any] | None:
            status = kubectl_json("get", "lad", "broken", "-n", ns, kubeconfig=cluster.kubeconfig).get("status") or {}
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})
            return status if cond.get("status") == "True" and cond.get("reason") == "CrashLoopBackOff" else None

        status = wait_for(degraded, timeout=300, interval=2, message="the LAD Degraded with reason CrashLoopBackOff")
        assert status["phase"] == "Degraded"
        (pod,) = kubectl_json("get", "pods", "-n", ns, "-l", "localattn.dev/deployment=broken",
                              kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
        (container,) = pod["status"]["containerStatuses"]
        assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert container["restartCount"] >= 1
        message = next(c for c in status["conditions"] if c["type"] == "Degraded")["message"]
        assert pod["metadata"]["name"] in message
        events = kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=broken",
                              kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
        assert any(e["type"] == "Warning" and e["reason"] == "CrashLoopBackOff" for e in events), events


def test_a_lad_never_available_within_its_progress_deadline_reports_degraded(
    cluster: ClusterInfo, operator: subprocess.Popen[bytes]
) -> None:
    """A real vLLM that runs but never passes its probes (it serves on another port than the one probed): no
    crash to report, so only the Deployment's progress deadline, set from `spec.rollout.progressDeadlineSeconds`
    (30 s here, not the default 10 min), says it is stuck; the LAD reports that, with a Warning event."""
    stuck = lad(replicas=1)
    stuck["metadata"]["name"] = "stuck"
    stuck["spec"]["runtime"]["extraArgs"] = ["--enforce-eager", "--port", "8999"]  # argparse: the last --port wins
    stuck["spec"]["rollout"] = {"progressDeadlineSeconds": 30}
    with temp_namespace(cluster.kubeconfig, prefix="dataplane-deadline-") as ns:
        body = {"apiVersion": "v1", "kind": "List", "items": [*model_volume(ns), stuck]}
        started = time.monotonic()
        kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(body))

        def degraded() -> dict[str, Any] | None:
            status = kubectl_json("get", "lad", "stuck", "-n", ns, kubeconfig=cluster.kubeconfig).get("status") or {}
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})
            return status if cond.get("status") == "True" else None

        status = wait_for(degraded, timeout=240, interval=2, message="the LAD Degraded")
        elapsed = time.monotonic() - started
        cond = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert cond["reason"] == "ProgressDeadlineExceeded", status
        assert status["phase"] == "Degraded"
        assert elapsed >= 30, f"reported after {elapsed:.0f}s, before the 30 s deadline could pass"
        (dep,) = kubectl_json("get", "deployments", "-n", ns, kubeconfig=cluster.kubeconfig)["items"]
        assert dep["spec"]["progressDeadlineSeconds"] == 30
        (pod,) = kubectl_json("get", "pods", "-n", ns, "-l", "localattn.dev/deployment=stuck",
                              kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
        (container,) = pod["status"]["containerStatuses"]
        assert "running" in container["state"] and container["restartCount"] == 0 and not container["ready"]
        events = kubectl_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=stuck",
                              kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
        assert any(e["type"] == "Warning" and e["reason"] == "ProgressDeadlineExceeded" for e in events), events
