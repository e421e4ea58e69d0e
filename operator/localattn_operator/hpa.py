"""HorizontalPodAutoscaler interop, pure: which autoscaling API the cluster serves, and an HPA for a LAD.

Kubernetes 1.20 serves autoscaling/v1, v2beta1 and v2beta2; 1.23 made autoscaling/v2 GA and 1.26 stopped
serving v2beta2. The v2beta2 and v2 HPA specs are the same fields (metrics, behavior), so one renderer serves
both and only `apiVersion` differs; v1 has no custom metrics, which vLLM's signals are, so it is not an option.
The operator uses this to look for a user's HPA that targets a LAD whose `spec.autoscaling` is also set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from localattn_operator.models import GROUP, KIND, VERSION

PREFERRED = ("autoscaling/v2", "autoscaling/v2beta2")


class NoAutoscalingApi(LookupError):
    pass


def hpa_api_version(served: Iterable[str]) -> str:
    """The HPA group/version to use, given the served ones (`kubectl api-versions`, or discovery's
    group versions): autoscaling/v2 where served (current Kubernetes), else autoscaling/v2beta2 (1.20-1.25)."""
    available = set(served)
    for version in PREFERRED:
        if version in available:
            return version
    raise NoAutoscalingApi(f"the cluster serves neither of {', '.join(PREFERRED)} (served: {sorted(available)})")


def hpa_for_lad(
    lad: str,
    *,
    api_version: str,
    min_replicas: int,
    max_replicas: int,
    waiting_per_replica: str = "2",
    metric: str = "vllm_num_requests_waiting",
) -> dict[str, Any]:
    """An HPA that scales a LAD through its scale subresource on vLLM's waiting-request gauge, served as a
    Pods metric by a custom metrics adapter (prometheus-adapter renames `vllm:` series to `vllm_`, as
    docs/autoscaling.md shows). The behavior block spells out the HPA defaults this project also uses."""
    if api_version not in PREFERRED:
        raise ValueError(f"api_version must be one of {PREFERRED}, got {api_version!r}")
    return {
        "apiVersion": api_version,
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": lad},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": lad},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": metric},
                    "target": {"type": "AverageValue", "averageValue": waiting_per_replica},
                },
            }],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                                 {"type": "Pods", "value": 4, "periodSeconds": 15}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                },
            },
        },
    }
