"""What the rollout state machine reads and returns (pure data), and the helpers the executor calls around it.

The executor builds an `Observation` from the cluster (arms counted by revision label, the revision records,
the LAD's annotations, the verdict of the window `analysis_due` asked for), calls `rollout.step`, and applies
the `Decision`: arms in order (replicas per revision and track), router weights, `status.rollout`, events,
conditions, and a requeue time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from localattn_operator.analysis import AnalysisRequest, Verdict
from localattn_operator.duration import parse_duration, parse_time
from localattn_operator.models import LocalAttnDeploymentSpec, RolloutPhase, RolloutSpec, RolloutStatus
from localattn_operator.status import Event
from localattn_operator.weights import RouteWeights

Track = Literal["stable", "canary"]
MAX_MEASUREMENTS = 10  # Argo keeps 10
MAX_HISTORY = 20
POLL_SECONDS = 5.0  # while pods start or capacity moves (Deployment events also trigger a pass)
WITH_CANARY: tuple[RolloutPhase, ...] = ("Progressing", "Paused")
STEADY: tuple[RolloutPhase, ...] = ("Idle", "Promoted", "RolledBack", "Aborted")


@dataclass(frozen=True)
class ArmObservation:
    """One arm's Deployment, its pods counted by *revision label* (terminating pods of another revision not)."""

    revision: str | None
    replicas: int = 0
    ready: int = 0
    available: int = 0
    crash_looping: bool = False
    deadline_exceeded: bool = False  # the Deployment's Progressing condition says ProgressDeadlineExceeded
    message: str = ""


@dataclass(frozen=True)
class Observation:
    spec_revision: str | None  # None: the spec is invalid (hold everything)
    stable: ArmObservation | None = None
    canary: ArmObservation | None = None
    recorded_revisions: frozenset[str] = frozenset()  # the cluster's revision records (ControllerRevisions)
    annotations: Mapping[str, str] = field(default_factory=dict)
    verdict: Verdict | None = None  # the answer to `analysis_due(...)`, if the executor measured it
    router_weight: int | None = None  # gatewayAPI: the canary weight read back from the route
    # The LAD's pods being deleted but not gone yet: they still hold their GPUs (a replacement scheduled on a
    # spare GPU meanwhile would raise the GPU count above the budget, which maxSurge 0 promises never happens).
    terminating: int = 0


@dataclass(frozen=True)
class ArmPlan:
    track: Track
    revision: str
    replicas: int


@dataclass(frozen=True)
class ConditionChange:
    type: Literal["Degraded", "QualityDrift"]
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    arms: tuple[ArmPlan, ...]  # apply in this order (shrinking arm first); arms not listed are pruned
    weights: RouteWeights
    status: RolloutStatus
    events: tuple[Event, ...] = ()
    conditions: tuple[ConditionChange, ...] = ()
    requeue_after: float | None = None


def initial_status(current_revision: str | None) -> RolloutStatus:
    """Status of a LAD that has no rollout status yet (new, or from before rollouts: its revision is stable)."""
    return RolloutStatus(stable_revision=current_revision)


def rollout_spec(spec: LocalAttnDeploymentSpec) -> RolloutSpec:
    """Without `spec.rollout` a new revision replaces the old at once, still without a capacity drop."""
    return spec.rollout if spec.rollout is not None else RolloutSpec(steps=[])


def step_interval(spec: LocalAttnDeploymentSpec, index: int) -> int:
    steps = rollout_spec(spec).effective_steps()
    own = steps[index].analysis_interval if 0 <= index < len(steps) else None
    return parse_duration(own or spec.analysis.interval)


def analysis_due(status: RolloutStatus, spec: LocalAttnDeploymentSpec | None, now: datetime) -> AnalysisRequest | None:
    """The window the executor must measure before the next `step`, or None."""
    end = parse_time(status.next_analysis_at)
    if spec is None or end is None or now < end or status.stable_revision is None:
        return None
    if status.phase in WITH_CANARY and status.canary_revision is not None:
        seconds = step_interval(spec, status.step_index)
        return AnalysisRequest("canary", end - timedelta(seconds=seconds), end, status.stable_revision,
                               status.canary_revision, status.step_index)
    if status.phase == "Promoted" and spec.probe.enabled and status.baseline is not None:
        seconds = parse_duration(spec.analysis.interval)
        return AnalysisRequest("guard", end - timedelta(seconds=seconds), end, status.stable_revision, None)
    return None


def protected_revisions(status: RolloutStatus) -> set[str]:
    """Revision records the executor must keep whatever the history limit: what runs, and the rollback target."""
    names = (status.stable_revision, status.canary_revision, status.previous_revision, status.draining_revision)
    return {r for r in names if r}


def printer_columns(status: RolloutStatus) -> tuple[int | None, float | None, float | None]:
    """`kubectl get lad`'s Canary, P95 and Quality: the achieved canary weight while a canary runs; the
    canary's p95 and probe exact match from the last analysis (the stable arm's when there is no canary)."""
    canary = status.canary_revision is not None and status.phase in ("Progressing", "Paused", "Promoting")
    last = status.last_analysis
    arm = None if last is None else (last.canary if canary and last.canary.revision else last.stable)
    if last is not None and not canary and last.canary.revision == status.stable_revision:
        arm = last.canary  # a guard measurement: the "canary" slot holds the current stable
    return (status.achieved_weight if canary else None,
            _column(arm.p95_latency_seconds if arm else None), _column(arm.probe_exact_match if arm else None))


def _column(value: float | None) -> float | None:
    """Three decimals: `kubectl get` prints a number column as is (0.23761904761904762 helps nobody); the full
    figure stays in status.rollout.lastAnalysis."""
    return None if value is None else round(value, 3)
