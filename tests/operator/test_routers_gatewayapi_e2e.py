"""The gatewayAPI router against a real apiserver: the merge patch, the read-back, and conflicts for real.

The router's I/O is injected; here `get`/`patch` are bound to the kubernetes client the way the executor binds
them through k8s.py (merge patch, timeouts, 404 -> None, other errors -> RouterError). No registry ships the
Gateway API CRDs: the dev cluster's own structural HTTPRoute schema (`localattn_dev.gatewayschema`, group,
version, kind and field names as upstream, `weight` defaulting to 1) is the one used, as `dev up` installs it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from localattn_dev.gatewayschema import ensure_installed
from localattn_operator.routers.gatewayapi import (
    HTTPROUTE_GROUP,
    HTTPROUTE_PLURAL,
    HTTPROUTE_VERSION,
    ArmBackends,
    GatewayAPIRouter,
    weights_patch,
)
from localattn_operator.traffic_router import RouterError
from localattn_operator.weights import RouteWeights

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def routes_api(k8s: Any) -> Iterator[Any]:
    ensure_installed(k8s.kubeconfig)  # the dev cluster's own schema (`dev up` installs it too); kept if present
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(k8s.kubeconfig))
    yield client.CustomObjectsApi(api)
    api.close()


def bound_router(api: Any, name: str = "llm-route") -> GatewayAPIRouter:
    from kubernetes.client.exceptions import ApiException

    def get(namespace: str, route: str) -> Mapping[str, Any] | None:
        try:
            return api.get_namespaced_custom_object(HTTPROUTE_GROUP, HTTPROUTE_VERSION, namespace, HTTPROUTE_PLURAL,
                                                    route, _request_timeout=30)  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise RouterError(f"HTTPRoute {namespace}/{route}: {exc.status} {exc.reason}") from None

    def patch(namespace: str, route: str, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        try:
            return api.patch_namespaced_custom_object(  # type: ignore[no-any-return]
                HTTPROUTE_GROUP, HTTPROUTE_VERSION, namespace, HTTPROUTE_PLURAL, route, body,
                _request_timeout=30, _content_type="application/merge-patch+json")
        except ApiException as exc:
            raise RouterError(f"HTTPRoute {namespace}/{route}: {exc.status} {exc.reason}") from None

    return GatewayAPIRouter(name, get, patch)


def http_route(namespace: str) -> dict[str, Any]:
    return {"apiVersion": f"{HTTPROUTE_GROUP}/{HTTPROUTE_VERSION}", "kind": "HTTPRoute",
            "metadata": {"name": "llm-route", "namespace": namespace},
            "spec": {"parentRefs": [{"name": "gw", "sectionName": "http"}], "hostnames": ["llm.example"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                                "backendRefs": [{"name": "llm-stable", "port": 8000},
                                                {"name": "llm-canary", "port": 8000, "weight": 0}]},
                               {"backendRefs": [{"name": "docs", "port": 80}]}]}}


def test_router_patches_only_the_weights_and_reads_them_back(k8s: Any, routes_api: Any, namespace: str) -> None:
    k8s.apply(namespace, http_route(namespace))
    router = bound_router(routes_api)
    assert router.achieved_weight(namespace, "llm") == 0  # weight 1 (the schema's default) vs 0
    for stable, canary in ((90, 10), (75, 25), (0, 100), (100, 0)):
        router.set_weights(namespace, "llm", RouteWeights(stable, canary))
        live = k8s.get(namespace, "httproute", "llm-route")
        refs = live["spec"]["rules"][0]["backendRefs"]
        assert [(r["name"], r["weight"]) for r in refs] == [("llm-stable", stable), ("llm-canary", canary)]
        assert router.achieved_weight(namespace, "llm") == canary
    assert live["spec"]["rules"][1]["backendRefs"] == [{"name": "docs", "port": 80, "weight": 1}]
    assert live["spec"]["parentRefs"] == [{"name": "gw", "sectionName": "http"}]
    assert live["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]


def test_a_concurrent_edit_makes_the_patch_conflict_instead_of_being_overwritten(
        k8s: Any, routes_api: Any, namespace: str) -> None:
    k8s.apply(namespace, http_route(namespace))
    router = bound_router(routes_api)
    stale = router.get(namespace, "llm-route")
    assert stale is not None
    k8s.kubectl("annotate", "httproute", "llm-route", "-n", namespace, "team/owner=someone")  # a concurrent edit
    body = weights_patch(stale, ArmBackends.of("llm"), RouteWeights(50, 50))
    assert body is not None
    with pytest.raises(RouterError, match="409"):
        router.patch(namespace, "llm-route", body)
    router.set_weights(namespace, "llm", RouteWeights(50, 50))  # the next pass reads afresh and succeeds
    assert router.achieved_weight(namespace, "llm") == 50


def test_a_missing_route_is_a_router_error_and_nothing_is_created(k8s: Any, routes_api: Any, namespace: str) -> None:
    with pytest.raises(RouterError, match="not found"):
        bound_router(routes_api, "nope").set_weights(namespace, "llm", RouteWeights(90, 10))
    assert k8s.get(namespace, "httproute", "nope", missing_ok=True) is None
