"""Pure status computation: what was observed -> the new status and the events worth emitting.

Events are emitted on *transitions* only (computed against the previous status stored in the cluster), so
periodic resyncs stay quiet. The reconciler posts them *before* it writes the status that records the
transition (see reconciler.py): an operator dying in between posts them again on its next pass (at least
once, never lost), rather than at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from localattn_operator.models import Condition, ConditionType, LocalAttnDeploymentStatus, Phase

ApplyResult = Literal["created", "updated", "unchanged"]
ROLLOUT_DEGRADED_REASONS = frozenset({"RolledBack", "Aborted", "TrafficRouterError"})


@dataclass(frozen=True)
class PendingPod:
    name: str
    reason: str
    message: str
    since: datetime | None = None  # the pod's creation; None when unknown (then it counts as overdue)


@dataclass(frozen=True)
class FailingPod:
    """A serving container that cannot run: waiting in a back-off (CrashLoopBackOff, ImagePullBackOff, ...)."""

    name: str
    container: str
    reason: str
    restarts: int = 0
    exit_code: int | None = None
    last_message: str = ""  # the last termination's message (or reason), what `kubectl describe pod` shows


@dataclass(frozen=True)
class DeploymentState:
    """The parts of a Deployment's status that matter for ours."""

    desired: int
    replicas: int
    ready: int
    updated: int
    up_to_date: bool  # the deployment controller has observed the latest generation
    progress_deadline_exceeded: bool = False  # condition Progressing=False, reason ProgressDeadlineExceeded
    progress_message: str = ""


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
    failing: list[FailingPod] = field(default_factory=list)
    selector: str | None = None
    # Children the apiserver refused (400/422 on apply, e.g. a field the schema let through): reported like an
    # invalid spec, and nothing is applied, so the running version keeps serving.
    rejected: list[str] = field(default_factory=list)
    # Pods Pending for less than this since their creation are merely starting: counted, not reported.
    pending_grace_seconds: float = 60.0
    # Fields of the stored status that could not be read (parse_previous): reported, left untouched.
    unreadable: list[str] = field(default_factory=list)


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


def _failing_message(failing: list[FailingPod]) -> str:
    first = failing[0]
    last = f"exit code {first.exit_code}" if first.exit_code is not None else "no exit code yet"
    if first.last_message:
        last += f": {first.last_message.strip()[-300:]}"
    more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
    return (f"pod {first.name} container {first.container}: {first.reason}, {first.restarts} restart(s), "
            f"last {last}{more}")


def _failure(obs: Observation, overdue: list[PendingPod]) -> tuple[str, str] | None:
    """(reason, message) of why the serving pods do not come up, or None while all is on track.

    The most specific signal first: a container in a back-off names the pod and its last exit, which says more
    than the Deployment's progress deadline, which in turn is more than pods waiting to be scheduled.
    """
    if obs.failing:
        return obs.failing[0].reason, _failing_message(obs.failing)
    if obs.deployment is not None and obs.deployment.progress_deadline_exceeded:
        message = obs.deployment.progress_message or "the Deployment did not progress within its deadline"
        if overdue:
            message += f"; {_pending_message(overdue)}"
        return "ProgressDeadlineExceeded", message
    if overdue:
        return "PodsPending", _pending_message(overdue)
    return None


def compute(obs: Observation) -> tuple[LocalAttnDeploymentStatus, list[Event]]:
    prev = obs.previous
    prev_conditions = {c.type: c for c in prev.conditions}
    events: list[Event] = []

    def cond(type_: ConditionType, status: bool, reason: str, message: str = "") -> Condition:
        return _condition(prev_conditions, type_, status, reason, message, obs.now, obs.generation)

    invalid = bool(obs.problems or obs.rejected)
    invalid_message = "; ".join(obs.problems or obs.rejected)
    invalid_reason = "ValidationFailed" if obs.problems else "ApplyRejected"
    prev_invalid = prev_conditions.get("InvalidSpec")
    if invalid and (prev_invalid is None or prev_invalid.status != "True" or (prev_invalid.message or "") != invalid_message):
        if obs.problems:
            events.append(Event("Warning", "InvalidSpec", f"spec rejected, running version unchanged: {invalid_message}"))
        else:
            events.append(Event("Warning", "ApplyRejected",
                                f"the apiserver rejected the rendered children, running version unchanged: {invalid_message}"))
    if not invalid and prev_invalid is not None and prev_invalid.status == "True":
        events.append(Event("Normal", "SpecValid", "spec is valid again"))

    dep = obs.deployment
    desired = obs.desired_replicas if obs.desired_replicas is not None else (dep.desired if dep else 0)
    ready = dep.ready if dep else 0
    replicas = dep.replicas if dep else 0
    updated = dep.updated if dep else 0
    rolled_out = dep is not None and dep.up_to_date and updated >= desired and replicas <= desired
    all_ready = rolled_out and ready >= desired
    grace = timedelta(seconds=obs.pending_grace_seconds)
    overdue = [p for p in obs.pending if p.since is None or obs.now - p.since >= grace]
    failure = _failure(obs, overdue) if dep is not None else None

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
    prev_degraded = prev_conditions.get("Degraded")
    # Degraded because a rollout was rolled back or aborted is the rollout's (reconciler.py), not a pod failure.
    was_failing = prev_degraded is not None and prev_degraded.status == "True" \
        and prev_degraded.reason not in ROLLOUT_DEGRADED_REASONS
    if failure is not None and (not was_failing or prev_degraded is None or prev_degraded.reason != failure[0]):
        events.append(Event("Warning", failure[0], failure[1]))
    if failure is None and dep is not None and was_failing and prev_degraded is not None:
        events.append(Event("Normal", "Recovered", f"no longer degraded (was {prev_degraded.reason})"))
    if obs.unreadable:
        events.append(Event("Warning", "StatusUnreadable",
                            f"status fields {', '.join(obs.unreadable)} could not be read; left as they are"))
    prev_ready = prev_conditions.get("Ready")
    if all_ready and (prev_ready is None or prev_ready.status != "True") and dep is not None:
        events.append(Event("Normal", "Ready", f"{ready}/{desired} replica(s) ready on revision {revision}"))

    conditions = [
        cond("InvalidSpec", invalid, invalid_reason if invalid else "Valid", invalid_message),
    ]
    if dep is None:
        conditions.append(cond("Ready", False, "NoDeployment", "the Deployment does not exist yet"))
        conditions.append(cond("Progressing", not invalid, "Creating" if not invalid else "InvalidSpec"))
        conditions.append(cond("Degraded", False, "NoDeployment"))
    else:
        ready_msg = f"{ready}/{desired} replica(s) ready"
        conditions.append(cond("Ready", all_ready, "AllReplicasReady" if all_ready else "NotAllReplicasReady", ready_msg))
        progress_msg = f"{updated}/{desired} updated, {ready}/{desired} ready"
        if dep.progress_deadline_exceeded and not all_ready:
            conditions.append(cond("Progressing", False, "ProgressDeadlineExceeded", dep.progress_message or progress_msg))
        elif all_ready:
            conditions.append(cond("Progressing", False, "Complete", progress_msg))
        elif obs.pending:
            conditions.append(cond("Progressing", True, "PodsPending", _pending_message(obs.pending)))
        else:
            conditions.append(cond("Progressing", True, "RollingOut", progress_msg))
        if failure is not None:
            conditions.append(cond("Degraded", True, failure[0], failure[1]))
        else:
            conditions.append(cond("Degraded", False, "AsExpected"))

    phase: Phase
    if invalid:
        phase = "InvalidSpec"
    elif dep is None:
        phase = "Pending"
    elif all_ready:
        phase = "Ready"
    elif failure is not None:
        phase = "Pending" if failure[0] == "PodsPending" and ready == 0 else "Degraded"
    else:
        phase = "Progressing"

    status = LocalAttnDeploymentStatus(
        observed_generation=obs.generation,
        phase=phase,
        desired_replicas=desired if not invalid else prev.desired_replicas,
        replicas=replicas,
        ready_replicas=ready,
        updated_replicas=updated,
        pending_replicas=len(obs.pending),
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


# Status fields every pass recomputes from what it observes: rewritten even when the stored value is unreadable.
# Every other field carries state from pass to pass (revisions, rollout progress): an unreadable value of one
# of those is left in the cluster untouched, never replaced by a default.
DERIVED_FIELDS = frozenset({
    "observedGeneration", "phase", "replicas", "readyReplicas", "updatedReplicas", "pendingReplicas", "ready",
    "conditions",
})


def parse_previous(raw: dict[str, Any]) -> tuple[LocalAttnDeploymentStatus, list[str]]:
    """The stored status, field by field: (what parses, the wire names of fields that do not).

    A status written by another version of the operator, or edited by hand, must not reset the rollout state:
    readable fields are kept, unknown ones are ignored (and, not being in our patch, left as they are), and
    unreadable ones are reported so that the caller leaves them alone too. Conditions are kept one by one.
    """
    try:
        return LocalAttnDeploymentStatus.model_validate(raw), []
    except ValidationError:
        pass
    known = {f.alias or name: name for name, f in LocalAttnDeploymentStatus.model_fields.items()}
    kept: dict[str, Any] = {}
    unreadable: list[str] = []
    for key, value in raw.items():
        if key not in known:
            continue
        if key == "conditions" and isinstance(value, list):
            good = []
            for item in value:
                try:
                    good.append(Condition.model_validate(item))
                except ValidationError:
                    unreadable.append("conditions")
            kept[key] = good
            continue
        try:
            LocalAttnDeploymentStatus.model_validate({key: value})
        except ValidationError:
            unreadable.append(key)
        else:
            kept[key] = value
    return LocalAttnDeploymentStatus.model_validate(kept), sorted(set(unreadable))
