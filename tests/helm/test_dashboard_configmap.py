"""The optional Grafana dashboard ConfigMap, rendered by Helm itself: off by default, the sidecar's label, the
generated dashboard byte for byte (the chart's copy, which tests/cli/test_dashboard.py keeps current)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from localattn_cli.dashboard import render_json

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "localattn"


def configmaps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]


def test_off_by_default(render: Any) -> None:
    assert configmaps(render()) == []


def test_carries_the_generated_dashboard_with_the_sidecar_label(render: Any) -> None:
    [cm] = configmaps(render({"dashboard": {"configMap": {"enabled": True}}}))
    assert cm["metadata"]["name"] == "la-localattn-dashboard"
    assert cm["metadata"]["namespace"] == "localattn-system"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert list(cm["data"]) == ["localattn.json"]
    assert cm["data"]["localattn.json"] == render_json()  # exact text, trailing newline included
    assert json.loads(cm["data"]["localattn.json"])["uid"] == "localattn-rollouts"


def test_namespace_label_and_annotations_from_values(render: Any) -> None:
    values = {"dashboard": {"configMap": {"enabled": True, "namespace": "monitoring",
                                          "labels": {"grafana_dashboard": "yes", "team": "ml"},
                                          "annotations": {"grafana_folder": "LLM serving"}}}}
    [cm] = configmaps(render(values))
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "yes" and cm["metadata"]["labels"]["team"] == "ml"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM serving"}
    # Helm merges maps with the defaults: null removes the default label (a sidecar with another label).
    [cm] = configmaps(render({"dashboard": {"configMap": {"enabled": True, "labels": {"grafana_dashboard": None,
                                                                                     "dashboards": "grafana"}}}}))
    assert "grafana_dashboard" not in cm["metadata"]["labels"] and cm["metadata"]["labels"]["dashboards"] == "grafana"


def test_lint_is_clean_with_the_dashboard() -> None:
    report = helm.lint(CHART_DIR, {"dashboard": {"configMap": {"enabled": True}}}, strict=True,
                       namespace="localattn-system", kube_version="v1.20.2")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_schema_refuses_unknown_dashboard_keys(render: Any) -> None:
    with pytest.raises(helm.errors.HelmValuesError, match=r"/dashboard/configMap.*'enabeld' not allowed"):
        render({"dashboard": {"configMap": {"enabeld": True}}})


def test_service_monitor_keeps_the_operators_namespace_label(render: Any) -> None:
    """The dashboard's rollout panels select the operator's metrics by the LAD's `namespace` label."""
    [monitor] = [d for d in render({"metrics": {"serviceMonitor": {"enabled": True}}}) if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
