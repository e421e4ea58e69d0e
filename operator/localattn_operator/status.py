"""Pure status computation: what was observed -> the new status and the events worth emitting.

Events are emitted on *transitions* only (computed against the previous status stored in the cluster), so a
restarted operator neither repeats nor loses them, and periodic resyncs stay quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from localattn_operator.models import Condition, ConditionType, LocalAttnDeploymentStatus, Phase

ApplyResult = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class PendingPod:
    name: str
    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentState:
    """The parts of a Deployment's status that matter for ours."""

    desired: int
    replicas: int
    ready: int
    updated: int
    up_to_date: bool  # the deployment controller has observed the latest generation


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Observation:
    generation: int
    previous: LocalAttnDeploymentStatus
    now: datetime
    problems: list[str] = field(default_factory=list)
    revision: str | None = None
    desired_replicas: int | None = None
    applied: dict[str, ApplyResult] = field(default_factory=dict)  # "Deployment/name" -> result
    deployment: DeploymentState | None = None
    pending: list[PendingPod] = field(default_factory=list)
    selector: str | None = None


def _condition(
    previous: dict[ConditionType, Condition], type_: ConditionType, status: bool, reason: str, message: str,
    now: datetime, generation: int,
) -> Condition:
    value: Literal["True", "False"] = "True" if status else "False"
    before = previous.get(type_)
    since = before.last_transition_time if before and before.status == value else now.isoformat()
    return Condition(
        type=type_, status=value, reason=reason, message=message or None,
        last_transition_time=since, observed_generation=generation,
    )


def _pending_message(pending: list[PendingPod]) -> str:
    first = pending[0]
    return f"{len(pending)} pod(s) Pending ({first.reason}): {first.message}".strip()


def compute(obs: Observation) -> tuple[LocalAttnDeploymentStatus, list[Event]]:
    prev = obs.previous
    prev_conditions = {c.type: c for c in prev.conditions}
    events: list[Event] = []

    def cond(type_: ConditionType, status: bool, reason: str, message: str = "") -> Condition:
        return _condition(prev_conditions, type_, status, reason, message, obs.now, obs.generation)

    invalid = bool(obs.problems)
    invalid_message = "; ".join(obs.problems)
    prev_invalid = prev_conditions.get("InvalidSpec")
    if invalid and (prev_invalid is None or prev_invalid.status != "True" or (prev_invalid.message or "") != invalid_message):
        events.append(Event("Warning", "InvalidSpec", f"spec rejected, running version unchanged: {invalid_message}"))
    if not invalid and prev_invalid is not None and prev_invalid.status == "True":
        events.append(Event("Normal", "SpecValid", "spec is valid again"))

    dep = obs.deployment
    desired = obs.desired_replicas if obs.desired_replicas is not None else (dep.desired if dep else 0)
    ready = dep.ready if dep else 0
    replicas = dep.replicas if dep else 0
    updated = dep.updated if dep else 0
    rolled_out = dep is not None and dep.up_to_date and updated >= desired and replicas <= desired
    all_ready = rolled_out and ready >= desired
    pending = obs.pending

    revision = obs.revision if not invalid else prev.current_revision
    if not invalid and obs.revision is not None:
        if prev.current_revision is None:
            events.append(Event("Normal", "Created", f"created revision {obs.revision} with {desired} replica(s)"))
        elif prev.current_revision != obs.revision:
            events.append(Event("Normal", "RollingUpdate", f"rolling out revision {obs.revision} (was {prev.current_revision})"))
        elif prev.observed_generation == obs.generation:
            for child, result in sorted(obs.applied.items()):
                if result != "unchanged":
                    events.append(Event("Warning", "DriftCorrected", f"{child} was {'missing' if result == 'created' else 'changed by hand'}; restored"))
    if not invalid and prev.desired_replicas is not None and prev.desired_replicas != desired:
        events.append(Event("Normal", "Scaled", f"scaled from {prev.desired_replicas} to {desired} replica(s)"))
    if pending and prev.pending_replicas == 0:
        events.append(Event("Warning", "PodsPending", _pending_message(pending)))
    prev_ready = prev_conditions.get("Ready")
    if all_ready and (prev_ready is None or prev_ready.status != "True") and dep is not None:
        events.append(Event("Normal", "Ready", f"{ready}/{desired} replica(s) ready on revision {revision}"))

    conditions = [
        cond("InvalidSpec", invalid, "ValidationFailed" if invalid else "Valid", invalid_message),
    ]
    if dep is None:
        conditions.append(cond("Ready", False, "NoDeployment", "the Deployment does not exist yet"))
        conditions.append(cond("Progressing", not invalid, "Creating" if not invalid else "InvalidSpec"))
        conditions.append(cond("Degraded", False, "NoDeployment"))
    else:
        ready_msg = f"{ready}/{desired} replica(s) ready"
        conditions.append(cond("Ready", all_ready, "AllReplicasReady" if all_ready else "NotAllReplicasReady", ready_msg))
        if pending:
            conditions.append(cond("Progressing", True, "PodsPending", _pending_message(pending)))
            conditions.append(cond("Degraded", True, "PodsPending", _pending_message(pending)))
        else:
            conditions.append(
                cond("Progressing", not all_ready, "RollingOut" if not all_ready else "Complete",
                     f"{updated}/{desired} updated, {ready}/{desired} ready")
            )
            conditions.append(cond("Degraded", False, "AsExpected"))

    phase: Phase
    if invalid:
        phase = "InvalidSpec"
    elif dep is None:
        phase = "Pending"
    elif pending and ready < desired:
        phase = "Degraded" if ready > 0 else "Pending"
    elif all_ready:
        phase = "Ready"
    else:
        phase = "Progressing"

    status = LocalAttnDeploymentStatus(
        observed_generation=obs.generation,
        phase=phase,
        desired_replicas=desired if not invalid else prev.desired_replicas,
        replicas=replicas,
        ready_replicas=ready,
        updated_replicas=updated,
        pending_replicas=len(pending),
        ready=f"{ready}/{desired}",
        selector=obs.selector or prev.selector,
        current_revision=revision,
        canary_weight=prev.canary_weight,
        p95_latency_seconds=prev.p95_latency_seconds,
        quality=prev.quality,
        conditions=conditions,
    )
    return status, events


def status_patch(status: LocalAttnDeploymentStatus) -> dict[str, Any]:
    """The status as a merge patch (None clears a field)."""
    return status.model_dump(mode="json", by_alias=True)
