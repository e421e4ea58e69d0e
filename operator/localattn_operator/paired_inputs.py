"""What a window's paired comparison needs, found during the pass: the prompts and one ready pod per arm.

Read under the LAD's lock, but cheap: at most two ConfigMap GETs, only when a canary window is due with
`spec.pairedComparison.enabled`. Sending the prompts is `measure.run_paired`'s job, off the lock. Anything
missing (a ConfigMap or key, an arm without a ready pod) becomes the request's `error`: the agreement gate
is Error and the window Inconclusive (held, never failed, never promoted blindly).
"""

from __future__ import annotations

from localattn_operator.analysis import AnalysisRequest
from localattn_operator.k8s import Cluster
from localattn_operator.measure import PairedRequest
from localattn_operator.models import ConfigMapKeyRef, LocalAttnDeploymentSpec
from localattn_operator.observe import Inventory, arm_pods, is_ready
from localattn_operator.paired import prompts_from


def paired_request(cluster: Cluster, namespace: str, spec: LocalAttnDeploymentSpec, inv: Inventory,
                   due: AnalysisRequest) -> PairedRequest:
    settings = spec.paired_comparison
    try:
        golden = _config_value(cluster, namespace, spec.probe.golden_set, "spec.probe.goldenSet")
        extra = _config_value(cluster, namespace, settings.prompts, "spec.pairedComparison.prompts")
        prompts = prompts_from(golden, extra, settings.max_prompts)
    except ValueError as exc:
        return PairedRequest(error=str(exc))
    if not prompts:
        return PairedRequest(error="no paired prompts: spec.probe.goldenSet and spec.pairedComparison.prompts "
                                   "give none")
    urls = {}
    for track, revision in (("stable", due.stable_revision), ("canary", due.canary_revision)):
        url = _pod_url(inv, track, revision, spec.runtime.port)
        if url is None:
            return PairedRequest(error=f"no ready {track} pod of revision {revision} to compare")
        urls[track] = url
    return PairedRequest(tuple(prompts), urls["stable"], urls["canary"], spec.model.served_model_name,
                         settings.max_tokens)


def _config_value(cluster: Cluster, namespace: str, ref: ConfigMapKeyRef | None, field: str) -> str | None:
    if ref is None:
        return None
    config_map = cluster.get("v1", "ConfigMap", namespace, ref.name)
    if config_map is None:
        raise ValueError(f"{field}: ConfigMap {ref.name} not found")
    value = (config_map.get("data") or {}).get(ref.key)
    if value is None:
        raise ValueError(f"{field}: ConfigMap {ref.name} has no key {ref.key}")
    return str(value)


def _pod_url(inv: Inventory, track: str, revision: str | None, port: int) -> str | None:
    """The first (by name) ready, not terminating pod of the arm's revision: the same pod for every prompt."""
    for pod in sorted(arm_pods(inv, track, revision), key=lambda p: p["metadata"]["name"]):  # type: ignore[arg-type]
        ip = (pod.get("status") or {}).get("podIP")
        if ip and is_ready(pod) and not pod["metadata"].get("deletionTimestamp"):
            return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"
    return None
