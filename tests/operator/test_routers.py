"""The traffic routers: replicas (achieved weight from ready pods) and gatewayAPI (the HTTPRoute patch, pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localattn_operator.routers.gatewayapi import (
    INFERENCE_POOL_GROUP,
    ArmBackends,
    GatewayAPIRouter,
    read_weights,
    weights_patch,
)
from localattn_operator.routers.replicas import ReplicasRouter, ready_split
from localattn_operator.traffic_router import RouterError
from localattn_operator.weights import RouteWeights, Split


def pod(revision: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"localattn.dev/revision": revision}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_ready_split_counts_ready_pods_by_revision_label() -> None:
    pods = [pod("s"), pod("s"), pod("s", ready=False), pod("s", deleting=True), pod("c"), pod("old"), {}]
    assert ready_split(pods, "s", "c") == Split(2, 1)
    assert ready_split(pods, "s", None) == Split(2, 0)


def test_replicas_router_reports_the_ready_share_and_writes_nothing() -> None:
    router = ReplicasRouter(lambda ns, lad: Split(3, 1))
    router.set_weights("ns", "llm", RouteWeights(90, 10))
    assert router.achieved_weight("ns", "llm") == 25
    assert ReplicasRouter(lambda ns, lad: Split(0, 0)).achieved_weight("ns", "llm") == 0


def route(stable_weight: int | None = 100, canary_weight: int | None = 0, kind: str = "Service") -> dict[str, Any]:
    group = "" if kind == "Service" else INFERENCE_POOL_GROUP

    def ref(name: str, weight: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "port": 8000} if kind == "Service" else {"name": name}
        if kind != "Service":
            out.update(group=group, kind=kind)
        if weight is not None:
            out["weight"] = weight
        return out

    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "llm-route", "namespace": "ns", "resourceVersion": "42"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "backendRefs": [ref("llm-stable", stable_weight), ref("llm-canary", canary_weight)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
             "backendRefs": [{"name": "docs", "port": 80, "weight": 7}]},
        ]},
    }


def test_patch_changes_only_the_arms_weights_and_carries_the_resource_version() -> None:
    original = route()
    patch = weights_patch(original, ArmBackends.of("llm"), RouteWeights(75, 25))
    assert patch is not None and patch["metadata"] == {"resourceVersion": "42"}
    expected = copy.deepcopy(original["spec"]["rules"])
    expected[0]["backendRefs"][0]["weight"] = 75
    expected[0]["backendRefs"][1]["weight"] = 25
    assert patch["spec"] == {"rules": expected}
    assert original["spec"]["rules"][0]["backendRefs"][1]["weight"] == 0  # the input is not mutated


def test_no_patch_when_the_route_already_carries_the_weights() -> None:
    assert weights_patch(route(90, 10), ArmBackends.of("llm"), RouteWeights(90, 10)) is None
    assert weights_patch(route(None, None), ArmBackends.of("llm"), RouteWeights(50, 50)) is not None  # 1:1 != 50


def test_read_weights_in_percent_with_the_default_weight_of_one() -> None:
    assert read_weights(route(90, 10), ArmBackends.of("llm")) == RouteWeights(90, 10)
    assert read_weights(route(None, None), ArmBackends.of("llm")) == RouteWeights(50, 50)
    assert read_weights(route(3, 1), ArmBackends.of("llm")) == RouteWeights(75, 25)
    assert read_weights(route(0, 0), ArmBackends.of("llm")) == RouteWeights(100, 0)
    assert read_weights(route(), ArmBackends.of("other")) is None


def test_a_route_without_both_arms_is_a_router_error_naming_them() -> None:
    lonely = route()
    lonely["spec"]["rules"][0]["backendRefs"].pop()
    with pytest.raises(RouterError, match="llm-stable and llm-canary"):
        weights_patch(lonely, ArmBackends.of("llm"), RouteWeights(90, 10))


def test_inference_pool_backends_are_matched_by_group_and_kind() -> None:
    pools = route(100, 0, kind="InferencePool")
    with pytest.raises(RouterError):  # Services of the same names are not these backends
        weights_patch(pools, ArmBackends.of("llm"), RouteWeights(90, 10))
    patch = weights_patch(pools, ArmBackends.of("llm", "InferencePool"), RouteWeights(90, 10))
    assert patch is not None and patch["spec"]["rules"][0]["backendRefs"][1] == {
        "name": "llm-canary", "group": INFERENCE_POOL_GROUP, "kind": "InferencePool", "weight": 10}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the apiserver does with application/merge-patch+json)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class Store:
    def __init__(self, obj: dict[str, Any] | None, ignore_writes: bool = False):
        self.obj, self.ignore_writes, self.patches = obj, ignore_writes, 0

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.obj)

    def patch(self, namespace: str, name: str, body: Any) -> dict[str, Any] | None:
        self.patches += 1
        assert self.obj is not None
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise RouterError("409 Conflict")
        if not self.ignore_writes:
            self.obj = merge(self.obj, body)
            self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)


def test_router_sets_verifies_and_is_idempotent() -> None:
    store = Store(route())
    router = GatewayAPIRouter("llm-route", store.get, store.patch)
    router.set_weights("ns", "llm", RouteWeights(75, 25))
    assert router.achieved_weight("ns", "llm") == 25
    assert store.obj is not None and store.obj["spec"]["rules"][1]["backendRefs"][0]["weight"] == 7
    router.set_weights("ns", "llm", RouteWeights(75, 25))
    assert store.patches == 1


def test_router_errors_leave_everything_alone() -> None:
    with pytest.raises(RouterError, match="not found"):
        GatewayAPIRouter("llm-route", Store(None).get, Store(None).patch).set_weights("ns", "llm", RouteWeights(90, 10))
    ignored = Store(route(), ignore_writes=True)  # e.g. a webhook that reverts the weights
    with pytest.raises(RouterError, match="read back"):
        GatewayAPIRouter("llm-route", ignored.get, ignored.patch).set_weights("ns", "llm", RouteWeights(90, 10))
