"""Revision id: a stable hash of everything that affects the serving pods.

Replicas (and, later, rollout settings) are left out so that scaling never creates a revision. The hash is
taken over canonical JSON (sorted keys, defaults applied), so dict ordering and omitted-vs-default fields
do not matter.
"""

from __future__ import annotations

import hashlib
import json

from localattn_operator.models import LocalAttnDeploymentSpec

# Fields of the spec that do not reach the pod template.
_NOT_POD_AFFECTING = {"replicas"}


def pod_affecting(spec: LocalAttnDeploymentSpec) -> dict[str, object]:
    return spec.model_dump(mode="json", by_alias=True, exclude=_NOT_POD_AFFECTING)


def revision_of(spec: LocalAttnDeploymentSpec) -> str:
    canonical = json.dumps(pod_affecting(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]
