"""rbac.admissionPolicy: the chart's ValidatingAdmissionPolicy, rendered by Helm itself (tests/helm/conftest.py).

Off by default. When on: it matches exactly the kinds the operator writes (derived from its client, so a new child
kind fails here until the policy covers it), only for the chart's ServiceAccount, and its CEL expressions - run by
a real CEL implementation (cel-python) on admission requests - admit every child the operator renders and refuse
a write to, an adoption of, or a delete of anyone else's object. Not tested here: a real >= 1.30 apiserver
enforcing it (the dev cluster runs 1.20, which lacks the API; rendering then fails, as tested below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "localattn-system"
ON = {"rbac": {"admissionPolicy": True}}
# Written by the operator but not its own objects: the user's LADs (kopf's annotations, status, scale), the user's
# HTTPRoute (weights only), Events, and the leader-election Lease in the release namespace.
NOT_OURS = {"localattndeployments", "httproutes", "events", "leases"}


def policy_docs(render: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in render(values) if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_off_by_default(render: Any) -> None:
    assert policy_docs(render, {}) == []


def test_policy_and_binding_for_the_charts_service_account(render: Any) -> None:
    policy, binding = policy_docs(render, ON)
    assert (policy["apiVersion"], policy["kind"]) == ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == 'request.userInfo.username == "system:serviceaccount:localattn-system:la-localattn"'
    custom = policy_docs(render, {**ON, "serviceAccount": {"create": False, "name": "ops"}})[0]
    assert custom["spec"]["matchConditions"][0]["expression"].endswith(':localattn-system:ops"')


def test_matches_exactly_the_kinds_the_operator_writes(render: Any) -> None:
    from localattn_operator import k8s

    writes = {resource.split("/")[0] for resource, verbs in k8s.API_VERBS.items()
              if verbs & {"create", "patch", "update", "delete"}}
    groups = {path.rsplit("/", 1)[-1]: ("" if path.startswith("/api/v1") else path.split("/")[2])
              for path in k8s._PATHS.values()}
    expected = {(groups[r], r) for r in writes - NOT_OURS}
    policy = policy_docs(render, ON)[0]
    matched = {(g, r) for rule in policy["spec"]["matchConstraints"]["resourceRules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert matched == expected
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]


def test_rendering_fails_on_a_cluster_without_the_api(render: Any) -> None:
    """Offline Helm renders for its own default (>= 1.30); the check is the template's. A 1.20 cluster has
    admissionregistration.k8s.io/v1 (webhooks) but not the policy: the version decides."""
    text = (ROOT / "helm" / "localattn" / "templates" / "admission-policy.yaml").read_text()
    assert 'semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version' in text and "{{- fail" in text


_CEL = celpy.Environment()


def admitted(policy: dict[str, Any], operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None) -> bool:
    """Every validation of the policy, evaluated as the apiserver would for one request by the operator."""
    activation = {"request": celpy.json_to_cel({"operation": operation, "userInfo": {"username": "op"}}),
                  "object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old)}
    for validation in policy["spec"]["validations"]:
        result = _CEL.program(_CEL.compile(validation["expression"])).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), (validation["expression"], result)
        if not result:
            return False
    return True


def operator_children() -> list[dict[str, Any]]:
    """Every kind of child the operator renders, for examples/deployment.yaml."""
    from localattn_operator import models, render
    from localattn_operator.revision import render_record

    lad = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
    spec = models.parse_spec({**lad["spec"], "networkPolicy": {"enabled": True}})
    owner = render.Owner("tiny-llama", "ns", "uid")
    definition = render.definition_of(spec)
    picker = models.EndpointPickerRef(name="epp")
    return [*render.render_children(owner, spec), render.arm_service(owner, definition, "canary"),
            render_record(owner, definition, 1), render.render_network_policy(owner, spec),
            render.arm_inference_pool(owner, definition, "canary", picker)]


def test_admits_everything_the_operator_renders_and_nothing_of_anyone_else(render: Any) -> None:
    policy = policy_docs(render, ON)[0]
    children = operator_children()
    assert {c["kind"] for c in children} >= {"ConfigMap", "Deployment", "Service", "ControllerRevision",
                                             "NetworkPolicy", "InferencePool"}
    for child in children:
        assert admitted(policy, "CREATE", child, None), child["kind"]
        assert admitted(policy, "UPDATE", child, child), child["kind"]
        assert admitted(policy, "DELETE", None, child), child["kind"]
    theirs = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "db", "labels": {"app": "db"}}}
    unlabelled = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-proxy"}}
    adopted = {**theirs, "metadata": {**theirs["metadata"], "labels": {
        "app": "db", "app.kubernetes.io/managed-by": "localattn-operator"}}}
    for operation, obj, old in [("CREATE", theirs, None), ("CREATE", unlabelled, None), ("UPDATE", theirs, theirs),
                                ("UPDATE", adopted, theirs),  # adding our label to someone's object
                                ("UPDATE", theirs, adopted),  # dropping our label: the result is not ours
                                ("DELETE", None, theirs), ("DELETE", None, unlabelled)]:
        assert not admitted(policy, operation, obj, old), (operation, obj, old)


@pytest.mark.parametrize("value", ["Helm", "localattn", ""])
def test_only_the_exact_label_value_counts(render: Any, value: str) -> None:
    policy = policy_docs(render, ON)[0]
    obj = {"metadata": {"name": "x", "labels": {"app.kubernetes.io/managed-by": value}}}
    assert not admitted(policy, "CREATE", obj, None)
