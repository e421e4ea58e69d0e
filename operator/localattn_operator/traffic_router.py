"""The traffic-router interface (Flagger's `SetRoutes`, Argo's per-router packages), with no I/O here.

`replicas` needs no router object: the weight is the share of ready pods (`weights.step_split`), and the
achieved weight is read from the arms' ready counts. `gatewayAPI` patches only the `weight` of the two
backendRefs of the named HTTPRoute (one Service or InferencePool per arm) and reads them back, so the status
reports the weight the route really has. The implementation lives beside the Kubernetes client.
"""

from __future__ import annotations

from typing import Protocol

from localattn_operator.weights import RouteWeights


class RouterError(Exception):
    """The route (or its CRD) is missing or was not changed: a condition, and nothing else is touched."""


class TrafficRouter(Protocol):
    def set_weights(self, namespace: str, lad: str, weights: RouteWeights) -> None:
        """Make the route send `weights` (percent per arm); idempotent; raises RouterError."""

    def achieved_weight(self, namespace: str, lad: str) -> int | None:
        """The canary percent the route carries now (None: the route has no canary backend yet)."""


def backend_weights(weights: RouteWeights, stable_backend: str, canary_backend: str) -> dict[str, int]:
    """The `weight` each backendRef must carry (the canary backend is kept at 0 rather than removed)."""
    return {stable_backend: weights.stable, canary_backend: weights.canary}
