"""The `replicas` traffic router: the canary's share is its share of the ready pods behind the one Service.

Nothing to patch: the executor's `ArmPlan`s (from `weights.step_split` / `weights.transfer`) *are* the split,
and the Service that selects both arms spreads connections over ready endpoints. What this router adds is
the *achieved* weight the status reports: ready canary pods over all ready pods, counted by the pods'
revision label (a re-templated arm's terminating pods of another revision do not count). The counting is pure
(`ready_split`); the pods come from the executor, which lists them anyway for the observation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from localattn_operator import weights
from localattn_operator.weights import RouteWeights, Split

REVISION_LABEL = "localattn.dev/revision"


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    """Ready and not terminating (a deleted pod leaves the Service's endpoints before it stops)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def ready_split(pods: Iterable[Mapping[str, Any]], stable_revision: str | None, canary_revision: str | None) -> Split:
    """Ready pods per arm, by revision label (pods as the API returns them: dicts with metadata and status)."""
    stable = canary = 0
    for pod in pods:
        if not pod_is_ready(pod):
            continue
        revision = ((pod.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)
        if revision is not None and revision == canary_revision:
            canary += 1
        elif revision is not None and revision == stable_revision:
            stable += 1
    return Split(stable, canary)


@dataclass(frozen=True)
class ReplicasRouter:
    """`TrafficRouter` for the replicas router; `ready(namespace, lad)` gives the ready pods per arm."""

    ready: Callable[[str, str], Split]

    def set_weights(self, namespace: str, lad: str, weights: RouteWeights) -> None:
        """Nothing to write: the replica split realises the weight (the executor applies the arms)."""

    def achieved_weight(self, namespace: str, lad: str) -> int | None:
        return weights.achieved_weight(self.ready(namespace, lad))
