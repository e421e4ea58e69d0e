"""e2e 6: the gatewayAPI router for real. A rollout's weights land on the user's HTTPRoute and the dev cluster's
proxy really splits requests sent to the route in that ratio, counted per arm by vLLM itself.

One process-mode cluster of our own (real vLLM CPU pods of the tiny random model, the HTTPRoute schema `dev up`
installs, HAProxy honouring HTTPRoutes), the operator as a real process, one LAD with one replica per arm and
the gatewayAPI router naming HTTPRoute `llm`. Steps 25 -> pause -> 75 -> pause; the analysis has only a
lenient error-rate gate over scraped pod metrics (so a setWeight step passes after one window of the
background traffic sent through the route; analysis is not what is tested here), and the pauses hold a weight
while requests are counted (the background traffic stopped). At each step the route carries the step's weights and the per-arm counts (`vllm:
request_success_total` on each pod) fit a binomial at that weight (HAProxy's weighted round robin is much
tighter than that). A deleted route holds the rollout (Degraded/TrafficRouterError, a resume not acted on);
recreated, the rollout goes on. An abort ends it: 100/0, every request to stable.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
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
LAD = "gw"
ROUTE = "llm"
PORT = 8000
REQUESTS = 60  # per measured step: ~5 s of one-token completions


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    with process_cluster(tmp_path_factory.mktemp("gateway"), nodes=1, gpus_per_node=2, models=("tiny-random",)) as info:
        yield info


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    install_lad_crd(cluster.kubeconfig)
    path = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(cluster.kubeconfig, path, env={"LOCALATTN_PROMETHEUS_URL": None}):
        yield path


def http_route(stable: int = 1, canary: int = 0) -> dict[str, Any]:
    """The user's route: both arms' Services as backendRefs (the operator sets only their weights)."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": ROUTE},
            "spec": {"parentRefs": [{"name": "gateway"}],
                     "rules": [{"backendRefs": [{"name": f"{LAD}-stable", "port": PORT, "weight": stable},
                                                {"name": f"{LAD}-canary", "port": PORT, "weight": canary}]}]}}


def lad(window: int) -> dict[str, Any]:
    return {
        "apiVersion": "localattn.dev/v1alpha1", "kind": "LocalAttnDeployment", "metadata": {"name": LAD},
        "spec": {
            "replicas": 1,
            "model": {"uri": "pvc://models/tiny-random", "servedModelName": LAD},
            "runtime": {"maxModelLen": 512, "dtype": "float32", "extraArgs": ["--enforce-eager"],
                        "resources": {"requests": {"nvidia.com/gpu": 1, "cpu": "1", "memory": "3Gi"},
                                      "limits": {"nvidia.com/gpu": 1, "memory": "3Gi"}}},
            "localAttention": {"enabled": True, "windowSize": window, "sinkTokens": 4, "minContextLength": 128},
            "memory": {"kvCacheMemory": "256Mi"},
            "rollout": {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}],
                        "maxSurge": 1, "progressDeadlineSeconds": 300,
                        "router": {"gatewayAPI": {"httpRoute": ROUTE}}},
            # Only a lenient error-rate gate: a setWeight step passes after one window with the background traffic.
            "analysis": {"interval": "10s", "minRequests": 3, "inconclusiveLimit": 50, "provider": {"scrape": {}},
                         "thresholds": {"maxLatencyRegressionPercent": {}, "maxErrorRate": 0.5}},
        },
    }  # fmt: skip


class Env:
    def __init__(self, cluster: ClusterInfo, ns: str, operator_log: Path):
        self.cluster, self.ns, self.operator_log = cluster, ns, operator_log

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kubectl(*args, "-n", self.ns, kubeconfig=self.cluster.kubeconfig, input=input, check=check)

    def apply(self, *manifests: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)}))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def rollout(self) -> dict[str, Any]:
        return ((self.get("lad", LAD) or {}).get("status") or {}).get("rollout") or {}

    def route_weights(self) -> tuple[int, int] | None:
        route = self.get("httproute", ROUTE)
        if route is None:
            return None
        refs = {r["name"]: r.get("weight", 1) for r in route["spec"]["rules"][0]["backendRefs"]}
        return refs[f"{LAD}-stable"], refs[f"{LAD}-canary"]

    def pod_ips(self) -> dict[str, str]:
        """The serving pod of each arm (one replica per arm)."""
        items = kubectl_json("get", "pods", "-n", self.ns, "-l", f"localattn.dev/deployment={LAD}",
                             kubeconfig=self.cluster.kubeconfig)["items"]  # fmt: skip
        ips: dict[str, str] = {}
        for p in items:
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            if ready and not p["metadata"].get("deletionTimestamp"):
                ips[p["metadata"]["labels"]["localattn.dev/track"]] = p["status"]["podIP"]
        return ips

    def wait(self, predicate: Any, message: str, timeout: float = 120) -> Any:
        try:
            return wait_for(predicate, timeout=timeout, interval=0.5, message=message)
        except TimeoutError as exc:
            status = json.dumps((self.get("lad", LAD) or {}).get("status"), indent=1)[-3000:]
            tail = self.operator_log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{exc}\nstatus: {status}\noperator log tail:\n{tail}") from None

    def annotate(self, verb: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.kubectl("annotate", "lad", LAD, "--overwrite", f"localattn.dev/{verb}={stamp}")


def successes(ip: str) -> float:
    with urllib.request.urlopen(f"http://{ip}:{PORT}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def complete(url: str, i: int) -> None:
    body = json.dumps({"model": LAD, "prompt": f"count {i}", "max_tokens": 1}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def send(url: str, n: int) -> None:
    for i in range(n):
        complete(url, i)


class Traffic:
    """Requests through the route in the background (what the analysis windows measure), stopped while a
    step's split is counted; errors (no ready arm yet, the route deleted) are retried."""

    def __init__(self, url: str):
        self.url = url
        self.active, self.done = threading.Event(), threading.Event()
        self.lock = threading.Lock()  # held during each request: `pause` returns with none in flight
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.done.is_set():
            if not self.active.wait(0.1):
                continue
            with self.lock:
                try:
                    complete(self.url, i)
                except Exception:  # not ready yet, or the route gone
                    time.sleep(0.5)
            i += 1
            time.sleep(0.05)

    def resume(self) -> None:
        self.active.set()

    def pause(self) -> None:
        self.active.clear()
        with self.lock:
            pass

    def __enter__(self) -> Traffic:
        self.thread.start()
        self.resume()
        return self

    def __exit__(self, *_: object) -> None:
        self.pause()
        self.done.set()
        self.thread.join(timeout=70)


def split(env: Env, url: str, n: int = REQUESTS) -> dict[str, float]:
    """Requests sent through the route, counted per arm by each arm's vLLM."""
    ips = env.pod_ips()
    before = {track: successes(ip) for track, ip in ips.items()}
    send(url, n)

    def counted() -> dict[str, float] | None:
        now = {track: successes(ip) - before[track] for track, ip in ips.items()}
        return now if sum(now.values()) >= n else None

    try:  # vLLM counts a request as it finishes, possibly a moment after the answer
        return dict(wait_for(counted, timeout=10, interval=0.2, message="vLLM's counters"))
    except TimeoutError:
        return {track: successes(ip) - before[track] for track, ip in ips.items()}


def assert_binomial(counts: dict[str, float], canary_percent: int) -> None:
    """The canary's count within 3.5 standard deviations of n*p (p = the route's canary share)."""
    n, p = sum(counts.values()), canary_percent / 100
    assert n == REQUESTS, counts  # every request answered by one of the two arms
    tolerance = 3.5 * math.sqrt(n * p * (1 - p))
    assert abs(counts.get("canary", 0) - n * p) <= tolerance, (counts, canary_percent, tolerance)


def test_route_weights_follow_the_steps_and_the_proxy_splits_requests_in_that_ratio(
        cluster: ClusterInfo, operator: Path) -> None:
    with temp_namespace(cluster.kubeconfig, prefix="gateway-e2e-") as ns:
        env = Env(cluster, ns, operator)
        env.apply(*model_volume(ns), http_route(), lad(window=64))
        env.wait(lambda: env.rollout().get("stableRevision"), "the first revision recorded as stable")
        env.wait(lambda: env.route_weights() == (100, 0), "the operator's first weights: all to stable")
        # The new revision at once: both arms' vLLM pods start together (the rollout waits for both).
        env.kubectl("patch", "lad", LAD, "--type", "merge", "-p",
                    json.dumps({"spec": {"localAttention": {"windowSize": 128}}}))
        url = env.wait(lambda: url_of(f"httproute/{ROUTE}", ns, cluster.state_dir), "the route's proxy address")
        with Traffic(url) as traffic:
            for step_index, weight in ((1, 25), (3, 75)):
                env.wait(lambda i=step_index: (env.rollout().get("phase"), env.rollout().get("stepIndex")) == ("Paused", i),
                         f"the pause after setWeight {weight}", timeout=300)
                traffic.pause()
                assert env.route_weights() == (100 - weight, weight)
                assert env.rollout()["achievedWeight"] == weight
                assert_binomial(split(env, url), weight)
                if step_index == 1:
                    # The route deleted: a resume is not acted on, the rollout holds with a clear condition.
                    env.kubectl("delete", "httproute", ROUTE)
                    env.annotate("resume")
                    degraded = env.wait(lambda: next((c for c in (env.get("lad", LAD) or {})["status"].get(
                        "conditions", []) if c["type"] == "Degraded" and c["status"] == "True"), None),
                        "Degraded while the route is missing", timeout=60)
                    assert degraded["reason"] == "TrafficRouterError" and ROUTE in degraded["message"], degraded
                    time.sleep(6)  # more than one retry period
                    held = env.rollout()
                    assert (held["phase"], held["stepIndex"]) == ("Paused", 1), held
                    assert set(env.pod_ips()) == {"stable", "canary"}
                    env.apply(http_route())  # back (at 100/0): the resume goes through, the weights are set again
                traffic.resume()

        env.annotate("abort")
        env.wait(lambda: env.rollout().get("phase") == "Aborted" and env.route_weights() == (100, 0),
                 "the abort: all traffic to stable")
        env.wait(lambda: set(env.pod_ips()) == {"stable"}, "the canary pod gone")
        assert split(env, url, 8) == {"stable": 8}
