"""spec.autoscaling / status.autoscaling: schema, cross-field rules, the generated CRD, the HPA interop helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_operator import crd
from localattn_operator.hpa import NoAutoscalingApi, hpa_api_version, hpa_for_lad
from localattn_operator.models import GROUP, KIND, VERSION
from localattn_operator.validation import SpecError, validate_spec

ROOT = Path(__file__).resolve().parents[2]
BASE = {"model": {"uri": "pvc://models/tiny-llama"}}


def spec_with(autoscaling: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**BASE, "autoscaling": autoscaling, **more}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as err:
        validate_spec(raw)
    return err.value.problems


def test_defaults_are_the_hpas_and_do_not_flap() -> None:
    spec = validate_spec(spec_with({"maxReplicas": 4, "targets": {"kvCacheUsage": 0.8}}))
    scaling = spec.autoscaling
    assert scaling is not None and scaling.min_replicas == 1
    assert scaling.scale_up.stabilization_window_seconds == 0
    assert (scaling.scale_up.max_increase_percent, scaling.scale_up.max_increase_pods) == (100, 4)
    assert scaling.scale_down.stabilization_window_seconds == 300 and scaling.scale_down.delay_seconds == 120
    assert validate_spec(BASE).autoscaling is None  # unset: replicas are the user's (or their HPA's)


def test_cross_field_rules_name_the_field() -> None:
    assert problems(spec_with({"minReplicas": 5, "maxReplicas": 2, "targets": {"kvCacheUsage": 0.8}})) == [
        "spec.autoscaling.minReplicas (5) must not exceed spec.autoscaling.maxReplicas (2)"
    ]
    (only,) = problems(spec_with({"maxReplicas": 2, "targets": {}}))
    assert only.startswith("spec.autoscaling.targets: set at least one of waitingRequestsPerReplica")
    # spec.replicas outside the bounds is not an error: the operator owns it and clamps it.
    assert validate_spec(spec_with({"maxReplicas": 2, "targets": {"p95TTFTSeconds": 1}}, replicas=7))


@pytest.mark.parametrize(("autoscaling", "field"), [
    ({"maxReplicas": 2, "targets": {"kvCacheUsage": 1.5}}, "spec.autoscaling.targets.kvCacheUsage"),
    ({"maxReplicas": 2, "targets": {"waitingRequestsPerReplica": 0}}, "spec.autoscaling.targets.waitingRequestsPerReplica"),
    ({"minReplicas": 0, "maxReplicas": 2, "targets": {"kvCacheUsage": 0.5}}, "spec.autoscaling.minReplicas"),
    ({"targets": {"kvCacheUsage": 0.5}}, "spec.autoscaling.maxReplicas"),
    ({"maxReplicas": 2, "targets": {"kvCacheUsage": 0.5}, "scaleDown": {"delaySeconds": -1}},
     "spec.autoscaling.scaleDown.delaySeconds"),
    ({"maxReplicas": 2, "targets": {"cpu": 50}}, "spec.autoscaling.targets.cpu"),
])
def test_schema_rejections_name_the_field(autoscaling: dict[str, Any], field: str) -> None:
    found = problems(spec_with(autoscaling))
    assert any(p.startswith(field + ":") for p in found), found


def _schema_at(path: str) -> dict[str, Any]:
    node: dict[str, Any] = crd.spec_schema()
    for part in path.split("."):
        node = node["properties"][part]
    return node


def test_crd_carries_the_autoscaling_schema_and_the_scale_subresource() -> None:
    scaling = _schema_at("spec.autoscaling")
    assert "default" not in scaling  # unset means "not autoscaled": no server-side {} that would turn it on
    assert scaling["required"] == ["maxReplicas", "targets"]
    assert _schema_at("spec.autoscaling.targets.kvCacheUsage")["maximum"] == 1
    assert _schema_at("spec.autoscaling.scaleDown.stabilizationWindowSeconds")["default"] == 300
    status = _schema_at("status.autoscaling")
    assert {"desiredReplicas", "currentReplicas", "lastDecision", "headroomPerReplica", "gpuLimited",
            "gpuLimitedMessage"} <= set(status["properties"])
    assert set(status["properties"]["lastDecision"]["properties"]) == {"time", "from", "to", "signal", "value", "reason"}
    scale = crd.build_crd()["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}


@pytest.mark.parametrize(("served", "expected"), [
    # Kubernetes 1.20 (this project's dev cluster): `kubectl api-versions` for the autoscaling group.
    (["autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2"], "autoscaling/v2beta2"),
    # 1.23-1.25 serve both: prefer GA.
    (["autoscaling/v1", "autoscaling/v2", "autoscaling/v2beta2"], "autoscaling/v2"),
    # 1.26 and later.
    (["autoscaling/v1", "autoscaling/v2"], "autoscaling/v2"),
])
def test_hpa_api_version_follows_what_the_cluster_serves(served: list[str], expected: str) -> None:
    assert hpa_api_version(["apps/v1", *served]) == expected


def test_no_usable_autoscaling_api_is_an_error_naming_the_versions() -> None:
    with pytest.raises(NoAutoscalingApi, match="autoscaling/v2beta2"):
        hpa_api_version(["autoscaling/v1"])
    with pytest.raises(ValueError, match="api_version"):
        hpa_for_lad("x", api_version="autoscaling/v1", min_replicas=1, max_replicas=2)


@pytest.mark.parametrize(("path", "version"), [("hpa.yaml", "autoscaling/v2beta2"), ("hpa-v2.yaml", "autoscaling/v2")])
def test_hpa_examples_are_what_the_renderer_makes(path: str, version: str) -> None:
    shipped = yaml.safe_load((ROOT / "examples" / path).read_text())
    assert shipped == hpa_for_lad("tiny-llama", api_version=version, min_replicas=1, max_replicas=4)
    lad = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
    assert shipped["spec"]["scaleTargetRef"] == {"apiVersion": lad["apiVersion"], "kind": lad["kind"],
                                                 "name": lad["metadata"]["name"]}


def test_keda_example_targets_the_lad_on_the_production_labels() -> None:
    scaled = yaml.safe_load((ROOT / "examples" / "keda-scaledobject.yaml").read_text())
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": "tiny-llama"}
    assert scaled["spec"]["minReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    # The target labels the dev cluster's discovery and the production scrape config both give (brief).
    assert query.startswith("sum(vllm:num_requests_waiting{") and 'lad="tiny-llama"' in query and "namespace=" in query
    assert float(trigger["metadata"]["threshold"]) > 0
