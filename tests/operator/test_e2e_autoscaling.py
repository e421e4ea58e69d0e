"""spec.autoscaling on the real 1.20 control plane (simulate mode, the operator as a process): the operator owns
spec.replicas, records each decision in status.autoscaling, reverts a hand scale with an event, and reports
replicas Pending for lack of (fake) GPUs.

Simulated pods serve no metrics and this operator has no Prometheus, so every load signal is missing data here:
the autoscaler must hold (never read that as zero load and scale down). Load-driven scaling is shown with real
vLLM pods and Prometheus in test_e2e_autoscaling_real.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LAD = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
NAME = LAD["metadata"]["name"]
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 3, "targets": {"waitingRequestsPerReplica": 2}}


def lad(**autoscaling: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(LAD)
    manifest["spec"]["autoscaling"] = {**AUTOSCALING, **autoscaling}
    return manifest


def _scaling(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("autoscaling") or {}


def test_the_operator_owns_replicas_and_reverts_a_hand_scale(k8s: Any, operator: Any, namespace: str) -> None:
    k8s.apply(namespace, lad())
    lad_ = k8s.wait_lad(namespace, NAME, lambda s: s.get("phase") == "Ready" and s.get("ready") == "2/2"
                        and _scaling(s).get("desiredReplicas") == 2)
    scaling = _scaling(lad_["status"])
    # No metrics here: a hold, recorded (desired = current), never a scale-down on missing data.
    assert scaling["currentReplicas"] == 2 and scaling["gpuLimited"] is False
    assert scaling.get("headroomPerReplica") is None and lad_["spec"]["replicas"] == 2

    k8s.kubectl("scale", "lad", NAME, "-n", namespace, "--replicas", "3")  # by hand: within the bounds, still reverted

    def reverted() -> list[dict[str, Any]] | None:
        found = [e for e in k8s.events(namespace, NAME, "Warning") if e["reason"] == "ScaleReverted"]
        return found or None

    (event,) = k8s.wait_for(reverted, "a ScaleReverted event", timeout=60)
    assert "spec.replicas was set to 3 by hand" in event["message"] and "reverted to 2" in event["message"]
    lad_ = k8s.wait_lad(namespace, NAME, lambda s: s.get("ready") == "2/2")
    assert lad_["spec"]["replicas"] == 2
    assert k8s.get(namespace, "deployment", f"{NAME}-stable")["spec"]["replicas"] == 2  # never followed the hand

    # A raised minReplicas is a decision without data (the bounds): written through the scale subresource.
    k8s.kubectl("patch", "lad", NAME, "-n", namespace, "--type", "merge", "-p",
                json.dumps({"spec": {"autoscaling": {"minReplicas": 3}}}))
    lad_ = k8s.wait_lad(namespace, NAME, lambda s: s.get("ready") == "3/3" and _scaling(s).get("desiredReplicas") == 3,
                        timeout=90)
    assert lad_["spec"]["replicas"] == 3
    last = _scaling(lad_["status"])["lastDecision"]
    assert (last["from"], last["to"], last["signal"]) == (2, 3, "bounds")
    scaled = [e["message"] for e in k8s.events(namespace, NAME) if e["reason"] == "ScaledUp"]
    assert any(m.startswith("2 -> 3 replicas: bounds") for m in scaled), scaled


def test_replicas_pending_for_lack_of_gpus_are_reported_and_not_asked_for_again(
    k8s: Any, operator: Any, namespace: str
) -> None:
    """Two fake nodes of 4 GPUs each, 4 GPUs per pod, minReplicas 3: the third pod cannot be scheduled."""
    manifest = lad(minReplicas=3, maxReplicas=4)
    manifest["spec"]["replicas"] = 3
    for part in ("limits", "requests"):
        manifest["spec"]["runtime"]["resources"][part]["nvidia.com/gpu"] = 4
    k8s.apply(namespace, manifest)
    lad_ = k8s.wait_lad(namespace, NAME, lambda s: _scaling(s).get("gpuLimited") is True, timeout=90)
    scaling = _scaling(lad_["status"])
    assert "Insufficient nvidia.com/gpu" in scaling["gpuLimitedMessage"]
    assert "not asking for more than 3" in scaling["gpuLimitedMessage"]
    assert scaling["desiredReplicas"] == 3 and lad_["spec"]["replicas"] == 3  # the floor, and no more
    assert lad_["status"]["readyReplicas"] <= 2  # what the GPUs hold
    warnings = [e for e in k8s.events(namespace, NAME, "Warning") if e["reason"] == "GPULimited"]
    assert len(warnings) == 1 and "Insufficient nvidia.com/gpu" in warnings[0]["message"]
