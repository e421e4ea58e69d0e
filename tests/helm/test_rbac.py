"""Least privilege: the rendered RBAC grants exactly what the operator and kopf use, nowhere more."""

from __future__ import annotations

from typing import Any

import pytest

NAMESPACE = "localattn-system"
SUBJECT = {"kind": "ServiceAccount", "name": "la-localattn", "namespace": NAMESPACE}

READ = {"get", "list", "watch"}
OWN = READ | {"create", "patch", "update", "delete"}
# (apiGroup, resource) -> verbs, in every namespace the operator manages.
NAMESPACED = {
    ("localattn.dev", "localattndeployments"): READ | {"patch", "update"},
    ("localattn.dev", "localattndeployments/status"): {"get", "patch", "update"},
    ("apps", "deployments"): OWN,
    ("", "services"): OWN,
    ("", "configmaps"): OWN,
    ("", "pods"): READ,
    ("", "events"): {"create", "patch"},
}
# kopf's discovery, cluster-scoped in every mode.
CLUSTER = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): READ,
    ("", "namespaces"): READ,
}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Effective (group, resource) -> verbs of a rule list."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def rbac(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io/")]


def roles_by_binding(docs: list[dict[str, Any]]) -> dict[tuple[str, str | None], dict[tuple[str, str], set[str]]]:
    """(binding kind, namespace) -> what that binding grants our ServiceAccount; checks every roleRef resolves."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in rbac(docs)
             if d["kind"] in ("ClusterRole", "Role")}
    granted: dict[tuple[str, str | None], dict[tuple[str, str], set[str]]] = {}
    for binding in (d for d in rbac(docs) if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [SUBJECT]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], namespace, ref["name"])]
        key = (binding["kind"], binding["metadata"].get("namespace"))
        for resource, verbs in grants(role["rules"]).items():
            granted.setdefault(key, {}).setdefault(resource, set()).update(verbs)
    return granted


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a", "team-b"]}], ids=["cluster", "namespaced"])
def test_no_wildcards_no_secrets_no_escalation(render: Any, values: dict[str, Any]) -> None:
    for doc in rbac(render(values)):
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{doc['kind']} {doc['metadata']['name']}: wildcard in {field}"
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            assert not {"secrets", "serviceaccounts", "roles", "rolebindings", "clusterroles",
                        "clusterrolebindings", "nodes"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_cluster_wide_grants_exactly_what_is_used(render: Any) -> None:
    granted = roles_by_binding(render())
    assert granted == {("ClusterRoleBinding", None): {**NAMESPACED, **CLUSTER}}


def test_watch_namespaces_switches_to_roles(render: Any) -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert not [d for d in rbac(docs) if d["kind"] == "ClusterRole" and grants(d["rules"]).keys() & NAMESPACED.keys()]
    assert roles_by_binding(docs) == {
        ("ClusterRoleBinding", None): CLUSTER,
        ("RoleBinding", "team-a"): NAMESPACED,
        ("RoleBinding", "team-b"): NAMESPACED,
    }
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("run") + 1:] == [
        "--liveness", "http://0.0.0.0:8081/healthz", "--namespace", "team-a", "--namespace", "team-b",
    ]


def test_every_verb_the_operator_code_uses_is_granted() -> None:
    """The API paths in localattn_operator.k8s map onto granted resources: adding one fails here first."""
    from localattn_operator import k8s

    resources = {path.rsplit("/", 1)[-1] for path in k8s._PATHS.values()}
    assert resources <= {resource for _group, resource in NAMESPACED}
