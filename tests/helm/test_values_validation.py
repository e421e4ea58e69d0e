"""Values that make no sense fail the render (so `helm install` stops) with a message that says what to fix."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount 2 needs leaderElection.enabled"),
        ({"leaderElection": {"renewDeadlineSeconds": 15}},
         "leaderElection needs retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds (got 2, 15, 15)"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required when serviceAccount.create is false"),
        ({"metrics": {"port": 8081}}, "metrics.port and health.port must differ (both are 8081)"),
        ({"resyncSeconds": 0}, "resyncSeconds must be greater than 0 (got 0)"),
        ({"watchNamespaces": ["Team_A"]}, '"Team_A" is not a valid namespace name'),
        ({"watchNamespaces": ["team-a", "team-a"]}, '"team-a" is listed twice'),
    ],
    ids=["two-replicas-no-leader", "lease-timing", "sa-without-name", "port-clash", "no-resync", "bad-namespace",
         "duplicate-namespace"],
)
def test_template_checks(render: Any, values: dict[str, Any], message: str) -> None:
    from helm_python import HelmRenderError

    with pytest.raises(HelmRenderError) as failure:
        render(values)
    assert message in str(failure.value)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"watchNamespace": ["team-a"]}, "additional properties 'watchNamespace' not allowed"),
        ({"metrics": {"port": 0}}, "/metrics/port"),
        ({"metrics": {"port": "8080"}}, "/metrics/port"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"leaderElection": {"leaseDuration": 15}}, "additional properties 'leaseDuration' not allowed"),
    ],
    ids=["typo", "port-zero", "port-string", "pull-policy", "digest", "namespaces-not-a-list", "zero-replicas",
         "lease-typo"],
)
def test_schema_checks(render: Any, values: dict[str, Any], where: str) -> None:
    from helm_python import HelmValuesError

    with pytest.raises(HelmValuesError) as failure:
        render(values)
    assert where in str(failure.value)
