"""A user's HorizontalPodAutoscaler driving a LAD through the scale subresource, on the real 1.20 control plane.

The dev cluster has no metrics API (no metrics-server, no custom metrics adapter), so metric-driven scaling is
not exercised here: what is, for real, is that the HPA controller of kube-controller-manager accepts an HPA
whose target is a LAD, reads its scale (replicas and the selector it needs to find the pods), reports that it
cannot get the metric, and writes the LAD's replicas through the scale subresource when they leave its bounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_operator.hpa import hpa_api_version

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HPA = yaml.safe_load((ROOT / "examples" / "hpa.yaml").read_text())
LAD = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
NAME = LAD["metadata"]["name"]


def _conditions(hpa: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in (hpa.get("status") or {}).get("conditions", [])}


def _hpa_events(k8s: Any, namespace: str) -> list[dict[str, Any]]:
    out = k8s.kubectl("get", "events", "-n", namespace, "--field-selector",
                      f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={NAME}", "-o", "json").stdout
    return json.loads(out)["items"]


def test_dev_cluster_serves_v2beta2_and_not_v2(k8s: Any) -> None:
    served = k8s.kubectl("api-versions").stdout.split()
    assert "autoscaling/v2beta2" in served and "autoscaling/v2" not in served
    assert hpa_api_version(served) == "autoscaling/v2beta2"


def test_hpa_targeting_a_lad_is_accepted_and_reads_its_scale(k8s: Any, operator: Any, namespace: str) -> None:
    k8s.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "deployment.yaml"))
    k8s.wait_lad(namespace, NAME, lambda s: s.get("phase") == "Ready" and s.get("ready") == "2/2")
    scale = json.loads(k8s.kubectl(
        "get", "--raw", f"/apis/localattn.dev/v1alpha1/namespaces/{namespace}/localattndeployments/{NAME}/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == f"localattn.dev/deployment={NAME}"

    k8s.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "hpa.yaml"))
    assert HPA["apiVersion"] == "autoscaling/v2beta2"

    def read_scale() -> dict[str, Any] | None:
        hpa = k8s.get(namespace, "horizontalpodautoscalers.v2beta2.autoscaling", NAME)
        conditions = _conditions(hpa)
        ok = (hpa.get("status") or {}).get("currentReplicas") == 2 and "ScalingActive" in conditions
        return hpa if ok else None

    hpa = k8s.wait_for(read_scale, "the HPA controller to read the LAD's scale", timeout=90)
    conditions = _conditions(hpa)
    assert conditions["AbleToScale"]["status"] == "True"
    assert conditions["AbleToScale"]["reason"] == "SucceededGetScale"
    # No custom metrics API here: the controller got as far as querying the metric for the pods that the LAD's
    # selector picks (a scale without a selector would read InvalidSelector instead), and says why it stops.
    active = conditions["ScalingActive"]
    assert active["status"] == "False" and active["reason"] == "FailedGetPodsMetric", active
    assert "vllm_num_requests_waiting" in active["message"]
    assert "no custom metrics API (custom.metrics.k8s.io) registered" in active["message"]
    reasons = {e["reason"] for e in _hpa_events(k8s, namespace)}
    assert "FailedGetPodsMetric" in reasons and "SelectorRequired" not in reasons
    assert k8s.get(namespace, "lad", NAME)["spec"]["replicas"] == 2  # no metrics: the HPA leaves the count alone

    # Above its maxReplicas (4) the HPA rescales without metrics, writing the LAD's scale subresource: the
    # operator (spec.autoscaling unset) follows like any other scale.
    k8s.kubectl("scale", "lad", NAME, "-n", namespace, "--replicas", "6")
    lad = k8s.wait_lad(namespace, NAME, lambda s: s.get("ready") == "4/4" and s.get("phase") == "Ready", timeout=120)
    assert lad["spec"]["replicas"] == 4
    assert k8s.get(namespace, "deployment", f"{NAME}-stable")["spec"]["replicas"] == 4  # the stable arm
    rescales = [e["message"] for e in _hpa_events(k8s, namespace) if e["reason"] == "SuccessfulRescale"]
    assert any("New size: 4" in m and "above Spec.MaxReplicas" in m for m in rescales), rescales
