"""spec.autoscaling end to end: real vLLM CPU pods (node agent process mode), real Prometheus, the real load client
(`localattn load`, i.e. `vllm bench serve`), the operator as a process with the dev cluster's Prometheus.

The LAD's one replica admits 2 sequences at a time (`--max-num-seqs 2`), so 8 concurrent requests leave about 6
waiting: above the target of 1 waiting request per replica. The checks, on one cluster and one LAD:
- load above target scales 1 -> 2, not before the scale-up stabilisation window and within it plus a scrape
  interval, the decision interval and the smoothing window of the load query;
- load stopped scales back to 1, after the scale-down delay;
- the count never leaves [minReplicas, maxReplicas], and the headroom per replica is measured from vLLM's KV
  metrics while the pod serves;
- mid-rollout (the second test, from the first one's warm pod): the autoscaler decides the total, the rollout
  splits it by the step's weight (50 %, `maxSurge: 0`): 2 replicas are 1 + 1, scaled to 4 they are 2 + 2, back
  to 2 they are 1 + 1, on the same step of the same canary, and the pods holding a GPU never exceed
  maxReplicas. Two nodes of two fake GPUs hold the four pods.
vLLM start-up is the cost (about a minute for the first pod); the second pod may still be starting when the load
stops, which the decision must handle too (it counts only ready pods).
"""

from __future__ import annotations

import json
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

from localattn_dev.controlplane import ClusterInfo
from localattn_dev.devurls import url_of
from localattn_dev.fleetsampler import FleetSampler
from localattn_dev.procs import stop_child
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
LAD = "scaled"
SCRAPE = 2.0  # the dev cluster's Prometheus scrape interval (localattn_dev.prometheus.SCRAPE_INTERVAL)
INTERVAL = 3.0  # LOCALATTN_AUTOSCALE_INTERVAL_SECONDS: a decision on fresh load this often
LOAD_WINDOW = 6.0  # LOCALATTN_AUTOSCALE_WINDOW_SECONDS: the gauges' avg_over_time range
UP_WINDOW, DOWN_WINDOW, DOWN_DELAY = 10, 20, 30
MID_ROLLOUT_DOWN_DELAY = 90  # the mid-rollout test's: two new vLLM pods start within it
TARGET_WAITING = 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    with process_cluster(tmp_path_factory.mktemp("autoscaling"), nodes=2, gpus_per_node=2,
                         models=("tiny-random",)) as info:
        yield info


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


@pytest.fixture(scope="module")
def ns(cluster: ClusterInfo) -> Iterator[str]:
    """One namespace for the module: the mid-rollout test starts from the first test's warm pod."""
    with temp_namespace(cluster.kubeconfig, prefix="autoscaling-e2e-") as name:
        yield name


def start_load(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    from localattn_runtime.tinymodel import random_model_dir

    return subprocess.Popen(
        [sys.executable, "-m", "localattn_cli.main", "load", "--target", str(url), "--model", LAD,
         "--tokenizer", str(random_model_dir()), "--requests", "5000", "--concurrency", str(concurrency),
         "--window", "64", "--spread", "0.5", "--output-len", "64"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def stop_load(load: subprocess.Popen[bytes]) -> None:
    stop_child(load, group=True)  # and the `vllm bench serve` it runs


def test_load_above_target_scales_up_and_stopped_load_scales_down(
    cluster: ClusterInfo, operator: Path, prometheus: str, ns: str
) -> None:
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
        load = start_load(str(url), 8)
        try:
            above = wait_for(lambda: time.monotonic() if (waiting_now(prometheus, ns) or 0) > TARGET_WAITING
                             else None, timeout=180, interval=0.5, message="waiting requests above the target")
            assert above is not None
            up_at = wait_for(lambda: watch.first(2, above), timeout=120, interval=0.5,
                             message="spec.replicas 2")
        finally:
            stop_load(load)
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


def arm_replicas(cluster: ClusterInfo, ns: str) -> dict[str, tuple[int, int]]:
    """track -> (spec.replicas, ready replicas) of the LAD's arms' Deployments."""
    items = kubectl_json("get", "deployments", "-n", ns, "-l", f"localattn.dev/deployment={LAD}",
                         kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
    return {d["metadata"]["labels"]["localattn.dev/track"]: (int(d["spec"].get("replicas") or 0),
                                                            int((d.get("status") or {}).get("readyReplicas") or 0))
            for d in items}


def test_a_mid_rollout_scale_keeps_the_canary_weight(
    cluster: ClusterInfo, operator: Path, prometheus: str, ns: str
) -> None:
    """The autoscaler decides the total, the rollout splits it by the step's weight, neither fights the other.

    From the first test's end state (one warm stable pod), one apply raises the bounds to [2, 4] and changes the
    local-attention window, which starts a canary at 50 % with `maxSurge: 0`, a step whose analysis window (1 h)
    outlasts the test (so nothing but the autoscaler moves the split). 2 replicas split 1 + 1; load above the
    target scales to 4, split 2 + 2; the load stopped, back to 2, split 1 + 1. Throughout: the same step and
    canary, the pods holding a GPU (terminating ones too) never above maxReplicas."""
    doc = lad()
    spec = doc["spec"]
    spec["autoscaling"] |= {"minReplicas": 2, "maxReplicas": 4}
    # the load stops once 4 is decided, so that the new pods start on quiet cores; the delay outlasts their start
    spec["autoscaling"]["scaleDown"]["delaySeconds"] = MID_ROLLOUT_DOWN_DELAY
    spec["localAttention"]["windowSize"] = 32
    spec["rollout"] = {"steps": [{"setWeight": 50, "analysisInterval": "1h"}], "maxSurge": 0,
                       "progressDeadlineSeconds": 600}
    kubectl("apply", "-n", ns, "-f", "-", kubeconfig=cluster.kubeconfig, input=json.dumps(doc))

    def rollout() -> dict[str, Any]:
        status = kubectl_json("get", "lad", LAD, "-n", ns, kubeconfig=cluster.kubeconfig).get("status") or {}
        return dict(status.get("rollout") or {})

    def split_is(stable: int, canary: int) -> dict[str, Any] | None:
        ro = rollout()
        arms = arm_replicas(cluster, ns)
        done = arms.get("stable") == (stable, stable) and arms.get("canary") == (canary, canary)
        return ro if done and ro.get("achievedWeight") == 50 else None

    url = wait_for(lambda: url_of(LAD, ns, cluster.state_dir), timeout=30, message="the Service's proxy address")
    with FleetSampler(cluster.kubeconfig, ns, LAD) as fleet, Watch(cluster, ns) as watch:
        at_two = wait_for(lambda: split_is(1, 1), timeout=420, interval=2,
                          message="the canary at 50 %: 1 + 1 ready pods of 2 replicas")
        canary, started = at_two["canaryRevision"], at_two["startedAt"]
        assert at_two["phase"] == "Progressing" and at_two["stepIndex"] == 0 and at_two["desiredWeight"] == 50
        load = start_load(str(url), 16)
        try:
            up_at = wait_for(lambda: watch.first(4, 0.0), timeout=180, interval=0.5, message="spec.replicas 4")
        finally:
            stop_load(load)
        at_four = wait_for(lambda: split_is(2, 2), timeout=MID_ROLLOUT_DOWN_DELAY, interval=1,
                           message="scaled to 4 mid-rollout: 2 + 2 ready pods (before the scale-down delay ends)")
        four_ready = time.monotonic()
        back = wait_for(lambda: split_is(1, 1), timeout=180, interval=1,
                        message="scaled back to 2 once the load stopped: 1 + 1")
    print(f"\nmid-rollout: 2 + 2 ready {four_ready - up_at:.0f}s after the scale to 4, back at 1 + 1 "
          f"{time.monotonic() - up_at:.0f}s after it")
    print(f"mid-rollout: {fleet.summary()}; replicas seen {sorted({r for _, r, _ in watch.seen})}")
    for ro in (at_four, back):
        assert (ro["canaryRevision"], ro["startedAt"], ro["stepIndex"], ro["phase"]) == \
            (canary, started, 0, "Progressing"), ro
    assert not back.get("measurements"), "no analysis window ran: only the autoscaler moved the split"
    counts = [r for _, r, _ in watch.seen]
    assert 2 in counts and 4 in counts and max(counts) <= 4, counts
    assert min(counts[counts.index(2):]) >= 2, counts  # (a first 1 is the first test's, until the bounds apply)
    assert max(s.gpu_pods_all for s in fleet.samples) <= 4, fleet.summary()  # maxSurge 0: never above maxReplicas
    assert max(s.planned_gpus for s in fleet.samples) <= 4, fleet.summary()
    events = kubectl_json("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={LAD}",
                          kubeconfig=cluster.kubeconfig)["items"]  # fmt: skip
    reasons = [e["reason"] for e in events]
    assert "RolledBack" not in reasons and reasons.count("RolloutStarted") == 1, reasons
    scaled = [e["message"] for e in events if e["reason"] == "ScaledUp"]
    assert any(m.startswith("2 -> ") for m in scaled), scaled
