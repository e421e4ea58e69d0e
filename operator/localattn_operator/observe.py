"""Observe one LAD's children: the inventory (found by label, not by name) and what each arm really runs.

An arm's Deployment says which revision it is templated with (its pod template's revision label); its pods say
how much of that revision serves. Pods are counted by *revision label*: a re-templated Deployment's old pods,
still terminating or not yet replaced, must not count as the new revision's capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from localattn_operator.k8s import Cluster, PodProblems, deployment_state_of, pod_problems_of
from localattn_operator.providers.scrape import ScrapeTarget, target
from localattn_operator.render import (
    LABEL_REVISION,
    LABEL_TRACK,
    TRACKS,
    Track,
    arm_name,
    selector_string,
)
from localattn_operator.revision import Record, parse_record, record_selector
from localattn_operator.rollout_types import ArmObservation
from localattn_operator.status import DeploymentState


@dataclass
class Inventory:
    """Everything of one LAD in the cluster, read once per pass."""

    records: dict[str, Record] = field(default_factory=dict)  # revision -> record
    arms: dict[Track, dict[str, Any]] = field(default_factory=dict)  # live arm Deployments
    legacy: dict[str, Any] | None = None  # the one Deployment (named like the LAD) of operators before arms
    config_maps: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    terminating: int = 0  # pods being deleted that still run (and hold their GPUs)

    def arm_revision(self, track: Track) -> str | None:
        dep = self.arms.get(track)
        return template_revision(dep) if dep is not None else None


def template_revision(dep: dict[str, Any] | None) -> str | None:
    """The revision a Deployment's pod template runs (its revision label)."""
    labels = (((dep or {}).get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    value = labels.get(LABEL_REVISION)
    return str(value) if value else None


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def take_inventory(cluster: Cluster, namespace: str, name: str, uid: str) -> Inventory:
    """Records, arms, the legacy Deployment, runtime ConfigMaps and pods: only what this LAD owns."""
    inv = Inventory()
    for obj in cluster.list_objects("apps/v1", "ControllerRevision", namespace, record_selector(name)):
        record = parse_record(obj)
        if record is not None and _owned_by(obj, uid):
            inv.records[record.revision] = record
    for dep in cluster.list_objects("apps/v1", "Deployment", namespace, selector_string(name)):
        if not _owned_by(dep, uid) or (dep.get("metadata") or {}).get("deletionTimestamp"):
            continue
        dep_name = dep["metadata"]["name"]
        tracks = {t for t in TRACKS if arm_name(name, t) == dep_name}
        if tracks:
            inv.arms[tracks.pop()] = dep
        elif dep_name == name:
            inv.legacy = dep
    inv.config_maps = [c for c in cluster.list_objects("v1", "ConfigMap", namespace, selector_string(name)) if _owned_by(c, uid)]
    pods = cluster.pods(namespace, selector_string(name))
    inv.pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    inv.terminating = sum(1 for p in pods if (p.get("metadata") or {}).get("deletionTimestamp")
                          and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
    return inv


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def labels_of(obj: dict[str, Any] | None) -> dict[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def arm_pods(inv: Inventory, track: Track, revision: str | None) -> list[dict[str, Any]]:
    return [p for p in inv.pods if labels_of(p).get(LABEL_TRACK) == track and labels_of(p).get(LABEL_REVISION) == revision]


def legacy_pods(inv: Inventory) -> list[dict[str, Any]]:
    return [p for p in inv.pods if LABEL_TRACK not in labels_of(p)]


def ready_count(pods: list[dict[str, Any]]) -> int:
    return sum(1 for p in pods if is_ready(p))


def arm_observation(inv: Inventory, track: Track) -> ArmObservation | None:
    """The arm as the state machine sees it (None: no such Deployment)."""
    dep = inv.arms.get(track)
    if dep is None:
        return None
    revision = template_revision(dep)
    pods = arm_pods(inv, track, revision)
    failing = pod_problems_of(pods).failing
    looping = [f for f in failing if f.reason == "CrashLoopBackOff"]
    state = deployment_state_of(dep)
    message = ""
    if failing:
        first = failing[0]
        message = f"pod {first.name}: {first.reason}, {first.restarts} restart(s) {first.last_message.strip()[-200:]}".strip()
    ready = ready_count(pods)
    return ArmObservation(revision=revision, replicas=len(pods), ready=ready, available=ready,
                          crash_looping=bool(looping), deadline_exceeded=state.progress_deadline_exceeded,
                          message=message)


def serving_state(inv: Inventory, desired: int, stable_revision: str | None, steady: bool) -> DeploymentState | None:
    """The LAD's serving pods as one Deployment-like state, for the status (status.compute): ready pods of every
    arm at its own revision (and of a legacy Deployment being migrated), up to date only when the stable arm alone
    serves at the stable revision. None while nothing exists yet."""
    deployments = [*inv.arms.values(), *([inv.legacy] if inv.legacy is not None else [])]
    if not deployments:
        return None
    states = [deployment_state_of(d) for d in deployments]
    ready = sum(ready_count(arm_pods(inv, t, inv.arm_revision(t))) for t in inv.arms) + ready_count(legacy_pods(inv))
    stable_dep = inv.arms.get("stable")
    stable_ok = stable_dep is not None and template_revision(stable_dep) == stable_revision
    updated = len(arm_pods(inv, "stable", stable_revision)) if stable_ok else 0
    deadline = next((s for s in states if s.progress_deadline_exceeded), None)
    return DeploymentState(
        desired=desired,
        replicas=len(inv.pods),  # counted from the same pod list as `ready` (a Deployment's status may lag it)
        ready=ready,
        updated=updated,
        up_to_date=steady and stable_ok and inv.legacy is None and "canary" not in inv.arms
        and all(s.up_to_date for s in states),
        progress_deadline_exceeded=deadline is not None,
        progress_message=deadline.progress_message if deadline is not None else "",
    )


def scrape_targets(inv: Inventory) -> dict[str, list[ScrapeTarget]]:
    """The ready pods of both arms, by revision, as the scrape provider reads them (`prometheus.io/port`)."""
    found: dict[str, list[ScrapeTarget]] = {}
    for track in inv.arms:
        revision = inv.arm_revision(track)
        for pod in arm_pods(inv, track, revision):
            ip = (pod.get("status") or {}).get("podIP")
            annotations = (pod.get("metadata") or {}).get("annotations") or {}
            port = annotations.get("prometheus.io/port")
            if revision and ip and port and str(port).isdigit() and is_ready(pod):
                found.setdefault(revision, []).append(
                    target(pod["metadata"]["name"], ip, int(port), annotations.get("prometheus.io/path", "/metrics")))
    return found


def serving_problems(inv: Inventory) -> PodProblems:
    return pod_problems_of(inv.pods)


__all__ = ["Inventory", "arm_observation", "is_ready", "labels_of", "scrape_targets", "serving_problems", "serving_state", "take_inventory", "template_revision"]
