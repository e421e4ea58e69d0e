"""The aggregated `edit`/`view` ClusterRoles: namespace users manage LocalAttnDeployments, the operator gains nothing.

Rendered by Helm v4 itself (helm-python-sdk). Kubernetes' aggregation controller copies the rules of every
ClusterRole whose labels match into `admin`, `edit` and `view`; these roles are bound to nobody.
"""

from __future__ import annotations

from typing import Any

import pytest

AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
LAD, STATUS, SCALE = "localattndeployments", "localattndeployments/status", "localattndeployments/scale"


def aggregated(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> ClusterRole, for the roles that carry an aggregation label."""
    return {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "ClusterRole" and any(k.startswith(AGGREGATE) for k in d["metadata"]["labels"])
    }


def grants(role: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["localattn.dev"], "only our own API group"
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}], ids=["cluster", "namespaced"])
def test_edit_and_view_roles_by_default(render: Any, values: dict[str, Any]) -> None:
    roles = aggregated(render(values))
    assert set(roles) == {"la-localattn-edit", "la-localattn-view"}
    edit, view = roles["la-localattn-edit"], roles["la-localattn-view"]
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith(AGGREGATE)} == {
        AGGREGATE + "edit": "true", AGGREGATE + "admin": "true",
    }
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith(AGGREGATE)} == {AGGREGATE + "view": "true"}
    assert grants(edit) == {
        LAD: {"get", "list", "watch", "create", "update", "patch", "delete"},
        SCALE: {"get", "update", "patch"},
        STATUS: {"get"},  # status is written by the operator only
    }
    assert grants(view) == {r: {"get", "list", "watch"} for r in (LAD, STATUS, SCALE)}


def test_bound_to_nobody(render: Any) -> None:
    """They only extend the default roles; no binding in the chart refers to them (the operator gains nothing)."""
    docs = render()
    names = set(aggregated(docs))
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["roleRef"]["name"] not in names


def test_no_write_to_status_and_no_wildcards(render: Any) -> None:
    for role in aggregated(render()).values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not grants(role).get(STATUS, set()) - {"get", "list", "watch"}


@pytest.mark.parametrize(
    "values", [{"rbac": {"aggregateClusterRoles": False}}, {"rbac": {"create": False}}], ids=["opt-out", "no-rbac"]
)
def test_can_be_turned_off(render: Any, values: dict[str, Any]) -> None:
    assert aggregated(render(values)) == {}


def test_names_follow_the_release(render: Any) -> None:
    assert set(aggregated(render(name="prod"))) == {"prod-localattn-edit", "prod-localattn-view"}
    assert set(aggregated(render({"fullnameOverride": "lattn"}))) == {"lattn-edit", "lattn-view"}


def test_value_is_typed(render: Any) -> None:
    with pytest.raises(Exception, match="aggregateClusterRoles"):
        render({"rbac": {"aggregateClusterRoles": "yes"}})
