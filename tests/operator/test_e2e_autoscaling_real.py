"""spec.autoscaling end to end: real vLLM CPU pods (node agent process mode), real Prometheus, the real load client
(`localattn load`, i.e. `vllm bench serve`), the operator as a process with the dev cluster's Prometheus.

The LAD's one replica admits 2 sequences at a time (`--max-num-seqs 2`), so 8 concurrent requests leave about 6
waiting: above the target of 1 waiting request per replica. The checks, on one cluster and one LAD:
- load above target scales 1 -> 2, not before the scale-up stabilisation window and within it plus a scrape
  interval, the decision interval and the smoothing window of the load query;
- load stopped scales back to 1, after the scale-down delay;
- the count never leaves [minReplicas, maxReplicas], and the headroom per replica is measured from vLLM's KV
  metrics while the pod serves.
vLLM start-up is the cost (about a minute for the first pod); the second pod may still be starting when the load
stops, which the decision must handle too (it counts only ready pods).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev.controlplane import ClusterInfo, down, up
from localattn_dev.devurls import url_of
from localattn_dev.testing import (
    install_lad_crd,
    kubectl,
    kubectl_json,
    model_volume,
    running_operator,
    temp_namespace,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
LAD = "scaled"
SCRAPE = 2.0  # the dev cluster's Prometheus scrape interval (localattn_dev.prometheus.SCRAPE_INTERVAL)
INTERVAL = 3.0  # LOCALATTN_AUTOSCALE_INTERVAL_SECONDS: a decision on fresh load this often
LOAD_WINDOW = 6.0  # LOCALATTN_AUTOSCALE_WINDOW_SECONDS: the gauges' avg_over_time range
UP_WINDOW, DOWN_WINDOW, DOWN_DELAY = 10, 20, 30
TARGET_WAITING = 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    state_dir = tmp_path_factory.mktemp("autoscaling")
    try:
        yield up(state_dir, nodes=1, gpus_per_node=2, node_mode="process", use_existing=False, models=("tiny-random",))
    finally:  # also after a failed start
        down(state_dir, purge=True)


@pytest.fixture(scope="module")
def prometheus(cluster: ClusterInfo) -> str:
    found = wait_for(lambda: url_of("prometheus", state_dir=cluster.state_dir), timeout=30, message="Prometheus")
    return str(found)


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, prometheus: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    install_lad_crd(cluster.kubeconfig)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(cluster.kubeconfig, log_path, env={
            "LOCALATTN_PROMETHEUS_URL": prometheus, "LOCALATTN_AUTOSCALE_INTERVAL_SECONDS": str(INTERVAL),
            "LOCALATTN_AUTOSCALE_WINDOW_SECONDS": str(LOAD_WINDOW)}):
        yield log_path


def lad() -> dict[str, Any]:
    return {
        "apiVersion": "localattn.dev/v1alpha1",
        "kind": "LocalAttnDeployment",
        "metadata": {"name": LAD},
        "spec": {
            "replicas": 1,
            "model": {"uri": "pvc://models/tiny-random", "servedModelName": LAD},
            "runtime": {
                "maxModelLen": 1024,
                "dtype": "float32",
                "extraArgs": ["--enforce-eager", "--max-num-seqs", "2"],
                "resources": {
                    "requests": {"nvidia.com/gpu": 1, "cpu": "1", "memory": "3Gi"},
                    "limits": {"nvidia.com/gpu": 1, "memory": "3Gi"},
                },
            },
            "localAttention": {"enabled": True, "windowSize": 64, "sinkTokens": 4, "minContextLength": 128},
            "memory": {"kvCacheMemory": "256Mi"},
            "autoscaling": {
                "minReplicas": 1, "maxReplicas": 2,
                "targets": {"waitingRequestsPerReplica": TARGET_WAITING},
                "scaleUp": {"stabilizationWindowSeconds": UP_WINDOW},
                "scaleDown": {"stabilizationWindowSeconds": DOWN_WINDOW, "delaySeconds": DOWN_DELAY},
            },
        },
    }


class Watch:
    """spec.replicas and status.autoscaling about every second, on a thread (what the assertions replay)."""

    def __init__(self, cluster: ClusterInfo, ns: str):
        self.cluster, self.ns = cluster, ns
        self.seen: list[tuple[float, int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                obj = kubectl_json("get", "lad", LAD, "-n", self.ns, kubeconfig=self.cluster.kubeconfig)
            except Exception:  # a slow apiserver on a busy machine: the next poll
                pass
            else:
                scaling = (obj.get("status") or {}).get("autoscaling") or {}
                self.seen.append((time.monotonic(), int(obj["spec"]["replicas"]), scaling))
            self._stop.wait(1.0)

    def first(self, replicas: int, after: float) -> float | None:
        return next((t for t, r, _ in self.seen if t >= after and r == replicas), None)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def waiting_now(prometheus: str, ns: str) -> float | None:
    query = urllib.parse.urlencode({"query": f'max(vllm:num_requests_waiting{{namespace="{ns}",lad="{LAD}"}})'})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as response:
        result = json.loads(response.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_load_above_target_scales_up_and_stopped_load_scales_down(
    cluster: ClusterInfo, operator: Path, prometheus: str
) -> None:
    from localattn_runtime.tinymodel import random_model_dir

    with temp_namespace(cluster.kubeconfig, prefix="autoscaling-e2e-") as ns:
        body = {"apiVersion": "v1", "kind": "List", "items": [*model_volume(ns), lad()]}
        kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(body))

        def ready() -> dict[str, Any] | None:
            status = kubectl_json("get", "lad", LAD, "-n", ns, kubeconfig=cluster.kubeconfig).get("status") or {}
            scaling = status.get("autoscaling") or {}
            return status if status.get("ready") == "1/1" and scaling.get("desiredReplicas") == 1 else None

        wait_for(ready, timeout=420, interval=2, message="the first vLLM pod Ready and the autoscaler holding at 1")
        url = wait_for(lambda: url_of(LAD, ns, cluster.state_dir), timeout=30, message="the Service's proxy address")
        wait_for(lambda: waiting_now(prometheus, ns) is not None, timeout=60, interval=1,
                 message="vLLM's waiting gauge in Prometheus")
        with Watch(cluster, ns) as watch:
            load = subprocess.Popen(
                [sys.executable, "-m", "localattn_cli.main", "load", "--target", str(url), "--model", LAD,
                 "--tokenizer", str(random_model_dir()), "--requests", "5000", "--concurrency", "8",
                 "--window", "64", "--spread", "0.5", "--output-len", "64"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                above = wait_for(lambda: time.monotonic() if (waiting_now(prometheus, ns) or 0) > TARGET_WAITING
                                 else None, timeout=180, interval=0.5, message="waiting requests above the target")
                assert above is not None
                up_at = wait_for(lambda: watch.first(2, above), timeout=120, interval=0.5,
                                 message="spec.replicas 2")
            finally:
                os.killpg(load.pid, signal.SIGTERM)
                try:
                    load.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(load.pid, signal.SIGKILL)
                    load.wait()
            stopped = time.monotonic()
            down_at = wait_for(lambda: watch.first(1, stopped), timeout=180, interval=1, message="spec.replicas 1")
            time.sleep(2 * INTERVAL)  # it stays there: no flapping back up on idle pods
        assert up_at is not None and down_at is not None
        took_up, took_down = up_at - above, down_at - stopped
        print(f"\nscale-up {took_up:.1f}s after waiting > target; scale-down {took_down:.1f}s after the load stopped "
              f"({down_at - up_at:.1f}s after the scale-up)")
        # Scale-up: not before the stabilisation window (its lowest recommendation must be 2), and within it plus a
        # scrape, a decision interval and the smoothing window (our poll of the gauge can lead Prometheus' by a scrape).
        assert UP_WINDOW - 2 * SCRAPE <= took_up <= UP_WINDOW + SCRAPE + INTERVAL + LOAD_WINDOW + 5, took_up
        # Scale-down: never within the delay after the scale-up; after the window and the smoothing once idle.
        assert down_at - up_at >= DOWN_DELAY - 1.5, down_at - up_at
        assert took_down <= max(DOWN_DELAY, DOWN_WINDOW + LOAD_WINDOW) + INTERVAL + SCRAPE + 10, took_down
        counts = [r for _, r, _ in watch.seen]
        assert min(counts) >= 1 and max(counts) <= 2, counts
        assert counts[-1] == 1
        headrooms = [s.get("headroomPerReplica") for _, _, s in watch.seen if s.get("headroomPerReplica") is not None]
        assert headrooms, "no headroom measured from vLLM's KV metrics"
        events = kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={LAD}",
                              kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
        messages = {e["reason"]: e["message"] for e in events if e["reason"] in ("ScaledUp", "ScaledDown")}
        assert messages["ScaledUp"].startswith("1 -> 2 replicas: waitingRequestsPerReplica"), messages
        assert messages["ScaledDown"].startswith("2 -> 1 replicas: waitingRequestsPerReplica"), messages
        assert not [e for e in events if e["reason"] == "ScaleReverted"]  # the operator's own writes are not hand scales
