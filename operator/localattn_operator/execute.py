"""Execute a rollout decision: apply the arms from their revision records, prune by inventory (KubeAI's
plan-then-execute). The decision itself is pure (`rollout.step`); this module only turns it into API calls.

Order: the arms in the decision's order (the shrinking one first, so its GPUs are freed), each after its
revision's runtime ConfigMap; then the Service; then pruning: arms the decision does not list, a migrated
LAD's old Deployment once the stable arm serves in its place, runtime ConfigMaps no live arm or protected
record needs, and revision records beyond the history limit (never a protected one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from localattn_operator.k8s import Cluster, Rejected
from localattn_operator.models import EndpointPickerRef, LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.observe import Inventory, arm_pods, labels_of, ready_count, template_revision
from localattn_operator.render import (
    LABEL_REVISION,
    PROGRESS_DEADLINE_SECONDS,
    TRACKS,
    Owner,
    arm_inference_pool,
    arm_service,
    config_map_name,
    legacy_config_map_name,
    render_arm,
    render_config_map,
    render_network_policy,
    selector_string,
    service_for,
)
from localattn_operator.revision import records_to_prune
from localattn_operator.rollout_types import Decision, protected_revisions
from localattn_operator.status import ApplyResult
from localattn_operator.traffic_router import RouterError, TrafficRouter

log = logging.getLogger(__name__)


@dataclass
class Execution:
    applied: dict[str, ApplyResult] = field(default_factory=dict)  # drift only: "Kind/name" -> created/updated
    rejected: list[str] = field(default_factory=list)
    missing_records: list[str] = field(default_factory=list)
    router_error: str | None = None  # the gatewayAPI router could not set or verify the weights
    changed: bool = False  # anything written or deleted (the caller then re-reads the inventory)


def _key(child: dict[str, Any]) -> str:
    return f"{child['kind']}/{child['metadata']['name']}"


def sync_network_policy(cluster: Cluster, owner: Owner, spec: LocalAttnDeploymentSpec) -> list[str]:
    """Apply the spec's NetworkPolicy (`spec.networkPolicy.enabled`), and delete every other policy of this LAD
    (found by label, owned by it): turning it off removes it. Not part of a revision: it follows the spec at once.
    Returns the apiserver's refusals."""
    wanted = render_network_policy(owner, spec)
    try:
        if wanted is not None and cluster.plan_apply(wanted) != "unchanged":
            cluster.apply(wanted)
    except Rejected as exc:
        return [f"{exc.child} rejected by the apiserver: {exc.message}"]
    for policy in cluster.list_objects("networking.k8s.io/v1", "NetworkPolicy", owner.namespace,
                                       selector_string(owner.name)):
        meta = policy["metadata"]
        owned = any(ref.get("uid") == owner.uid for ref in meta.get("ownerReferences") or [])
        if owned and (wanted is None or meta["name"] != wanted["metadata"]["name"]):
            log.info("%s/%s: pruning NetworkPolicy/%s", owner.namespace, owner.name, meta["name"])
            cluster.delete("networking.k8s.io/v1", "NetworkPolicy", owner.namespace, meta["name"], uid=meta.get("uid"))
    return []


class Executor:
    def __init__(self, cluster: Cluster, owner: Owner, inv: Inventory, before: RolloutStatus,
                 router: TrafficRouter | None = None, pool_picker: EndpointPickerRef | None = None):
        self.cluster, self.owner, self.inv, self.before = cluster, owner, inv, before
        self.router = router  # None: the replicas router (the weight is the share of ready pods: nothing to set)
        # gatewayAPI with backendKind InferencePool: the Endpoint Picker each arm's pool names (None: Services).
        self.pool_picker = pool_picker
        self.out = Execution()

    def _apply(self, child: dict[str, Any], drift_if_updated: bool, drift_if_created: bool) -> None:
        result = self.cluster.plan_apply(child)
        if result == "unchanged":
            return
        self.cluster.apply(child)
        self.out.changed = True
        if (result == "updated" and drift_if_updated) or (result == "created" and drift_if_created):
            self.out.applied[_key(child)] = result

    def run(self, decision: Decision, surge: int, history_limit: int, keep: set[str],
            progress_deadline: int | None = None) -> Execution:
        """Apply `decision`; `keep`: revisions whose records and ConfigMaps must stay (the spec's);
        `progress_deadline` None (the spec is invalid): each live arm keeps the deadline it has.

        The route's weights go first: they only ever send traffic to pods that are available now (the plan's
        `route_weights`), and a route that refuses them leaves everything as it was (`rollout.hold_for_router`
        then keeps the status too)."""
        if self.router is not None:
            if not self._pools(decision):
                return self.out
            try:
                self.router.set_weights(self.owner.namespace, self.owner.name, decision.weights)
            except RouterError as exc:
                self.out.router_error = str(exc)
                return self.out
        try:
            self._arms(decision, surge, progress_deadline)
        except Rejected as exc:  # a recorded definition the apiserver now refuses (a race, or an upgrade)
            self.out.rejected = [f"{exc.child} rejected by the apiserver: {exc.message}"]
            return self.out
        self._prune(decision, history_limit, keep)
        return self.out

    def _arms(self, decision: Decision, surge: int, progress_deadline: int | None) -> None:
        before, inv = self.before, self.inv
        stable_record = inv.records.get(decision.status.stable_revision or "")
        for plan in decision.arms:
            record = inv.records.get(plan.revision)
            if record is None or record.definition is None:
                self.out.missing_records.append(plan.revision)
                continue
            live = inv.arms.get(plan.track)
            self._apply(render_config_map(self.owner, record.definition), drift_if_updated=True,
                        drift_if_created=config_map_name(self.owner.name, plan.revision) in
                        {c["metadata"]["name"] for c in inv.config_maps} or live is not None)
            was_planned = (before.stable_revision == plan.revision and before.stable_replicas > 0) if plan.track == "stable" \
                else (before.canary_revision == plan.revision and before.canary_replicas > 0)
            # A change we did not plan is a hand edit: the live arm already had this revision and replica count.
            live_same_plan = live is not None and template_revision(live) == plan.revision \
                and int((live.get("spec") or {}).get("replicas", -1)) == plan.replicas
            deadline = progress_deadline or int(((live or {}).get("spec") or {}).get("progressDeadlineSeconds")
                                                 or PROGRESS_DEADLINE_SECONDS)
            self._apply(render_arm(self.owner, record.definition, plan.track, plan.replicas, surge, deadline),
                        drift_if_updated=live_same_plan, drift_if_created=was_planned)
        if stable_record is not None and stable_record.definition is not None:
            service = service_for(self.owner, stable_record.definition)
            live_service = self.cluster.get("v1", "Service", self.owner.namespace, self.owner.name)
            self._apply(service, drift_if_updated=labels_of(live_service).get(LABEL_REVISION) == stable_record.revision,
                        drift_if_created=True)
            if self.router is not None:  # the HTTPRoute's backendRefs: one per arm (kept, weight 0, when idle)
                for track in TRACKS:
                    if self.pool_picker is None:
                        self._apply(arm_service(self.owner, stable_record.definition, track), drift_if_updated=False,
                                    drift_if_created=False)

    def _pools(self, decision: Decision) -> bool:
        """backendKind InferencePool: each arm's pool (the route's backendRefs), before any weight moves. The
        Inference Extension not installed (404 on the type) or a pool refused is a router error: reported, the
        rollout held, nothing else changed, instead of a reconcile that fails forever. False on error."""
        stable_record = self.inv.records.get(decision.status.stable_revision or "")
        if self.pool_picker is None or stable_record is None or stable_record.definition is None:
            return True
        for track in TRACKS:
            pool = arm_inference_pool(self.owner, stable_record.definition, track, self.pool_picker)
            try:
                self._apply(pool, drift_if_updated=False, drift_if_created=False)
            except Rejected as exc:
                self.out.router_error = f"{exc.child} rejected by the apiserver: {exc.message}"
                return False
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    raise
                self.out.router_error = ("InferencePool (inference.networking.k8s.io/v1) is not served by this "
                                         "cluster: install the Gateway API Inference Extension CRDs")
                return False
        return True

    def _delete(self, api_version: str, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        log.info("%s/%s: pruning %s/%s", self.owner.namespace, self.owner.name, kind, meta["name"])
        self.cluster.delete(api_version, kind, self.owner.namespace, meta["name"], uid=meta.get("uid"))
        self.out.changed = True

    def _prune(self, decision: Decision, history_limit: int, keep: set[str]) -> None:
        inv, status = self.inv, decision.status
        listed = {plan.track for plan in decision.arms}
        for track, dep in inv.arms.items():
            if track not in listed:
                self._delete("apps/v1", "Deployment", dep)
        # A LAD from before the arms: its Deployment goes once the stable arm serves all it planned.
        stable = next((p for p in decision.arms if p.track == "stable"), None)
        if inv.legacy is not None and stable is not None and stable.replicas > 0 \
                and ready_count(arm_pods(inv, "stable", stable.revision)) >= stable.replicas:
            self._delete("apps/v1", "Deployment", inv.legacy)
        needed = {p.revision for p in decision.arms} | protected_revisions(status) | keep
        prefix = f"{self.owner.name}-runtime-"
        for cm in inv.config_maps:
            name = cm["metadata"]["name"]
            superseded = name.startswith(prefix) and name.removeprefix(prefix) not in needed
            legacy_unused = name == legacy_config_map_name(self.owner.name) and inv.legacy is None
            if superseded or legacy_unused:
                self._delete("v1", "ConfigMap", cm)
        for record in records_to_prune(inv.records.values(), history_limit, protected_revisions(status) | keep):
            self.cluster.delete("apps/v1", "ControllerRevision", self.owner.namespace, record.name)
            self.out.changed = True
