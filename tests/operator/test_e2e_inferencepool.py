"""The gatewayAPI router with `backendKind: InferencePool` on the real apiserver (simulated pods).

The operator owns one InferencePool per arm (the Gateway API Inference Extension v1) and patches the weights
of the user's HTTPRoute, whose backendRefs name those pools. No registry ships the Inference Extension's CRDs:
the test installs the dev cluster's structural subset (devcluster/localattn_dev/crds/inferencepool.yaml) and
the dev cluster's HTTPRoute schema. No Endpoint Picker runs here, so what is checked is the control plane:
without the CRD a clear condition and nothing created; with it, pools that select exactly each arm's pods,
and route weights that follow the steps. Simulated pods export no metrics: the analysis holds on missing
data and promotion is asked for with the control annotation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

POOL_CRD_NAME = "inferencepools.inference.networking.k8s.io"
GROUP = "inference.networking.k8s.io"


def lad(name: str) -> dict[str, Any]:
    from localattn_dev.testing import example_lad

    return example_lad(name, replicas=2, rollout={
        "steps": [{"setWeight": 50}],
        "router": {"gatewayAPI": {"httpRoute": "llm", "backendKind": "InferencePool",
                                  "endpointPicker": {"name": "epp", "port": 9002}}}},
        analysis={"interval": "10s", "inconclusiveLimit": 50})


def route(name: str) -> dict[str, Any]:
    refs = [{"group": GROUP, "kind": "InferencePool", "name": f"{name}-{track}", "weight": w}
            for track, w in (("stable", 100), ("canary", 0))]
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "llm"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": refs}]}}


def weights(k8s: Any, namespace: str) -> list[int]:
    refs = k8s.get(namespace, "httproute", "llm")["spec"]["rules"][0]["backendRefs"]
    return [int(r.get("weight", 1)) for r in refs]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def test_inference_pool_backends_follow_the_rollout_and_a_missing_crd_is_reported(k8s, operator, namespace) -> None:
    from localattn_dev.gatewayschema import ensure_installed
    from localattn_dev.testing import install_inference_pool_crd

    assert ensure_installed(k8s.kubeconfig)
    k8s.kubectl("delete", "crd", POOL_CRD_NAME, "--ignore-not-found", "--wait=true")  # ours; tests using it install it
    k8s.apply(namespace, route("pool"))
    k8s.apply(namespace, lad("pool"))
    status = k8s.wait_lad(namespace, "pool",
                          lambda s: condition(s, "Degraded").get("reason") == "TrafficRouterError")["status"]
    assert "Inference Extension" in condition(status, "Degraded").get("message", ""), status
    assert k8s.get(namespace, "deployment", "pool-stable", missing_ok=True) is None  # nothing half-made
    assert "TrafficRouterError" in k8s.event_reasons(namespace, "pool")

    install_inference_pool_crd(k8s.kubeconfig)
    k8s.kubectl("annotate", "lad", "pool", "-n", namespace, "--overwrite", f"e2e/nudge={time.time()}")
    first = k8s.wait_lad(namespace, "pool", lambda s: s.get("phase") == "Ready", timeout=90)["status"]["currentRevision"]
    for track in ("stable", "canary"):
        pool = k8s.get(namespace, "inferencepool", f"pool-{track}")
        assert pool["spec"]["selector"]["matchLabels"] == {"localattn.dev/deployment": "pool",
                                                          "localattn.dev/track": track}
        assert pool["spec"]["endpointPickerRef"] == {"group": "", "kind": "Service", "name": "epp",
                                                     "port": {"number": 9002}, "failureMode": "FailClose"}
        assert pool["spec"]["targetPorts"] == [{"number": 8000}]
        assert pool["metadata"]["ownerReferences"][0]["kind"] == "LocalAttnDeployment"
    assert weights(k8s, namespace) == [100, 0]

    k8s.kubectl("patch", "lad", "pool", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"windowSize": 256}}}))
    k8s.wait_for(lambda: weights(k8s, namespace) == [50, 50], "the route at the step's weight", timeout=90)
    status = k8s.wait_lad(namespace, "pool", lambda s: (s.get("rollout") or {}).get("achievedWeight") == 50,
                          timeout=60)["status"]  # read back from the route on the next pass
    assert status["rollout"]["canaryRevision"] != first
    k8s.kubectl("annotate", "lad", "pool", "-n", namespace, "--overwrite",
                f"localattn.dev/promote={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    done = k8s.wait_lad(namespace, "pool", lambda s: (s.get("rollout") or {}).get("phase") == "Promoted"
                        and s.get("phase") == "Ready", timeout=120)["status"]
    assert done["currentRevision"] == status["rollout"]["canaryRevision"]
    k8s.wait_for(lambda: weights(k8s, namespace) == [100, 0], "all traffic back on the stable pool")
    assert condition(done, "Degraded").get("status") != "True"
