"""The `gatewayAPI` traffic router: weights of the two arms' backendRefs on an HTTPRoute the user names.

The user owns the route (hostnames, matches, filters, the parentRefs to their Gateway) and lists both arms as
backendRefs (`NAME-stable`, `NAME-canary`: Services, or InferencePools of the Gateway API Inference
Extension). The operator changes only their `weight`s and reads them back, so the status reports the weight
the route really carries (Flagger and Argo do the same with their HTTPRoute routers).

The computation is pure: `weights_patch` builds a JSON merge patch and `read_weights` reads a route. A merge
patch replaces lists whole, so the patch carries every rule as read with only the weights changed, plus the
`resourceVersion` it was computed from: a concurrent edit of the route makes the write fail with a conflict
(retried on the next pass) instead of being overwritten. The I/O is injected: `GatewayAPIRouter` takes
`get(namespace, name)` and `patch(namespace, name, body)` callables that the executor binds to the one
Kubernetes client (`k8s.py`, group `gateway.networking.k8s.io`, version `v1`, plural `httproutes`, content type
`application/merge-patch+json`, with the client's timeouts). `get` returns None for a missing route; it raises
`RouterError` when the HTTPRoute CRD is not installed (404 on the resource type) and for API errors, and
`patch` raises `RouterError` on a 409 conflict or any other failure. Nothing else is ever changed: a
`RouterError` holds the rollout where it stands (`rollout.hold_for_router`) with a `TrafficRouterError`
condition. The dev cluster's proxy serves HTTPRoutes with these weights (docs/devcluster.md, "HTTPRoutes").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from localattn_operator.traffic_router import RouterError, backend_weights
from localattn_operator.weights import RouteWeights

HTTPROUTE_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_VERSION = "v1"
HTTPROUTE_PLURAL = "httproutes"
INFERENCE_POOL_GROUP = "inference.networking.k8s.io"  # the Inference Extension v1 (GA) API group
BackendKind = Literal["Service", "InferencePool"]
_GROUPS: dict[str, str] = {"Service": "", "InferencePool": INFERENCE_POOL_GROUP}
DEFAULT_WEIGHT = 1  # Gateway API: a backendRef without `weight` weighs 1


def arm_backend_name(lad: str, track: Literal["stable", "canary"]) -> str:
    """The Service (or InferencePool) of one arm, as the operator renders it."""
    return f"{lad}-{track}"


@dataclass(frozen=True)
class ArmBackends:
    stable: str
    canary: str
    kind: BackendKind = "Service"

    @classmethod
    def of(cls, lad: str, kind: BackendKind = "Service") -> ArmBackends:
        return cls(arm_backend_name(lad, "stable"), arm_backend_name(lad, "canary"), kind)


def _is_ref_to(ref: Mapping[str, Any], name: str, kind: BackendKind, namespace: str | None) -> bool:
    return (ref.get("name") == name and (ref.get("kind") or "Service") == kind
            and (ref.get("group") or "") == _GROUPS[kind]
            and (ref.get("namespace") in (None, namespace) or namespace is None))


def _arm_rules(route: Mapping[str, Any], backends: ArmBackends) -> list[int]:
    """Indexes of the rules that route to both arms (the others are not the operator's business)."""
    namespace = (route.get("metadata") or {}).get("namespace")
    out = []
    for i, rule in enumerate((route.get("spec") or {}).get("rules") or []):
        refs = rule.get("backendRefs") or []
        has = {arm: any(_is_ref_to(r, name, backends.kind, namespace) for r in refs)
               for arm, name in (("stable", backends.stable), ("canary", backends.canary))}
        if all(has.values()):
            out.append(i)
    return out


def _describe(route: Mapping[str, Any]) -> str:
    meta = route.get("metadata") or {}
    return f"HTTPRoute {meta.get('namespace', '?')}/{meta.get('name', '?')}"


def weights_patch(route: Mapping[str, Any], backends: ArmBackends, weights: RouteWeights) -> dict[str, Any] | None:
    """The merge patch that gives both arms' backendRefs `weights` in every rule routing to both; None when
    the route already carries them. RouterError when no rule lists both arms (nothing would be split)."""
    rules = _arm_rules(route, backends)
    if not rules:
        raise RouterError(f"{_describe(route)} has no rule with backendRefs to both {backends.kind}s "
                          f"{backends.stable} and {backends.canary}; add both (the operator sets only their weights)")
    new_rules = copy.deepcopy((route.get("spec") or {}).get("rules") or [])
    wanted = backend_weights(weights, backends.stable, backends.canary)
    namespace = (route.get("metadata") or {}).get("namespace")
    changed = False
    for i in rules:
        for ref in new_rules[i].get("backendRefs") or []:
            for name, weight in wanted.items():
                if _is_ref_to(ref, name, backends.kind, namespace) and ref.get("weight", DEFAULT_WEIGHT) != weight:
                    ref["weight"] = weight
                    changed = True
    if not changed:
        return None
    patch: dict[str, Any] = {"spec": {"rules": new_rules}}
    version = (route.get("metadata") or {}).get("resourceVersion")
    if version:
        patch["metadata"] = {"resourceVersion": version}
    return patch


def read_weights(route: Mapping[str, Any], backends: ArmBackends) -> RouteWeights | None:
    """The arms' weights in percent, as the route carries them; None when no rule lists both arms. Rules that
    disagree (someone edited one by hand) are reported as the most canary-heavy of them: the safe reading."""
    namespace = (route.get("metadata") or {}).get("namespace")
    rules = (route.get("spec") or {}).get("rules") or []
    found: list[RouteWeights] = []
    for i in _arm_rules(route, backends):
        total = {"stable": 0, "canary": 0}
        for ref in rules[i].get("backendRefs") or []:
            for arm, name in (("stable", backends.stable), ("canary", backends.canary)):
                if _is_ref_to(ref, name, backends.kind, namespace):
                    total[arm] += int(ref.get("weight", DEFAULT_WEIGHT))
        s, c = total["stable"], total["canary"]
        canary = 0 if s + c <= 0 else round(100 * c / (s + c))
        found.append(RouteWeights(100 - canary, canary))
    return max(found, key=lambda w: w.canary) if found else None


@dataclass(frozen=True)
class GatewayAPIRouter:
    """`TrafficRouter` over one HTTPRoute in the LAD's namespace (`spec.rollout.router.gatewayAPI.httpRoute`)."""

    http_route: str
    get: Callable[[str, str], Mapping[str, Any] | None]
    patch: Callable[[str, str, Mapping[str, Any]], Mapping[str, Any] | None]
    backend_kind: BackendKind = "Service"

    def _route(self, namespace: str) -> Mapping[str, Any]:
        route = self.get(namespace, self.http_route)
        if route is None:
            raise RouterError(f"HTTPRoute {namespace}/{self.http_route} not found (spec.rollout.router.gatewayAPI."
                              "httpRoute): create it with backendRefs to both arms; traffic was not changed")
        return route

    def set_weights(self, namespace: str, lad: str, weights: RouteWeights) -> None:
        backends = ArmBackends.of(lad, self.backend_kind)
        body = weights_patch(self._route(namespace), backends, weights)
        if body is None:
            return
        written = self.patch(namespace, self.http_route, body)
        now = read_weights(written if written is not None else self._route(namespace), backends)
        if now != weights:
            raise RouterError(f"HTTPRoute {namespace}/{self.http_route}: weights read back as {now}, "
                              f"wanted stable {weights.stable} / canary {weights.canary}")

    def achieved_weight(self, namespace: str, lad: str) -> int | None:
        found = read_weights(self._route(namespace), ArmBackends.of(lad, self.backend_kind))
        return None if found is None else found.canary
