"""The autoscaler's decision, pure: `decide(spec, state, samples, replicas, now) -> ScaleDecision`.

It is the HorizontalPodAutoscaler's algorithm (kube-controller-manager `podautoscaler/horizontal.go`), made a
function of its inputs so that every rule is a test row and an operator restart loses nothing:

1. bounds first: a count outside [minReplicas, maxReplicas] moves to the bound;
2. one recommendation per target (`autoscaling_signals`), the largest wins; a target without data holds,
   and while any target lacks data nothing scales down (missing data is never zero load);
3. stabilisation over the recorded recommendations: scale up to the *lowest* seen over the scale-up window,
   down to the *highest* seen over the scale-down window (the HPA keeps these in memory; we keep them in
   `status.autoscaling.recommendations`, so a restarted operator does not forget a spike);
4. the scale-up rate limit (per period, max of +percent and +pods, from the count at the period's start);
5. clamp to [min, max]; a scale-down delay after any scale event (new vLLM pods take minutes to warm);
6. GPUs: while pods are Pending for lack of a GPU, never ask for more than exists (`gpuLimited`).

During a rollout the result is the LAD's total; the rollout splits it between the arms by weight
(`weights.py`), so the two never fight; samples come from the ready pods of both arms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from localattn_operator.autoscaling_signals import (
    Samples,
    TargetRecommendation,
    headroom_per_replica,
    recommendations,
)
from localattn_operator.models import AutoscalingSpec, AutoscalingStatus, Recommendation, ScaleRecord
from localattn_operator.status import Event, PendingPod

Direction = Literal["up", "down", "hold"]
BOUNDS = "bounds"  # signal name of a move to minReplicas/maxReplicas
NO_DATA = "none"  # signal name when no target had data


@dataclass(frozen=True)
class ScaleEvent:
    time: datetime
    from_replicas: int
    to_replicas: int
    signal: str
    value: float | None
    reason: str


@dataclass(frozen=True)
class AutoscalerState:
    """What the windows and limits remember between decisions (stored in status.autoscaling)."""

    recommendations: tuple[tuple[datetime, int], ...] = ()
    scale_events: tuple[ScaleEvent, ...] = ()  # oldest first
    gpu_limited: bool = False


@dataclass(frozen=True)
class ReplicaCounts:
    """The managed count (the LAD's total, both rollout arms) and what the pods are doing."""

    current: int
    ready: int = 0  # reported in the gpuLimited message; decisions use the samples, one per ready pod
    pending_no_gpu: int = 0  # Pending and Unschedulable for lack of a GPU
    pending_message: str = ""


@dataclass(frozen=True)
class ScaleDecision:
    current: int
    desired: int
    direction: Direction
    signal: str  # the target that drove the count, BOUNDS, or NO_DATA
    value: float | None  # that signal's measured value
    reason: str
    recommendations: tuple[TargetRecommendation, ...]
    headroom_per_replica: float | None
    gpu_limited: bool
    gpu_limited_message: str | None
    state: AutoscalerState
    events: tuple[Event, ...] = field(default_factory=tuple)


def _clamp(value: int, spec: AutoscalingSpec) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, value))


def _raw_recommendation(
    spec: AutoscalingSpec, samples: Samples, current: int
) -> tuple[int | None, str, float | None, str, tuple[TargetRecommendation, ...]]:
    """(replicas or None for "no data", signal, value, reason, every target's recommendation)."""
    if current > spec.max_replicas or current < spec.min_replicas:
        bound = _clamp(current, spec)
        which = "maxReplicas" if current > spec.max_replicas else "minReplicas"
        return bound, BOUNDS, float(current), f"{current} replicas is outside the bounds: {which} is {bound}", ()
    recs = tuple(recommendations(spec.targets, samples, current))
    valid = [r for r in recs if r.replicas is not None]
    if not valid:
        notes = "; ".join(f"{r.signal}: {r.note}" for r in recs)
        return None, NO_DATA, None, f"holding: no data for any target ({notes})", recs
    best = max(valid, key=lambda r: r.replicas or 0)  # first of equals, in SIGNALS order
    assert best.replicas is not None
    value_text = f"{best.signal} {best.value:.3g} (target {best.target:g})" if best.value is not None else best.signal
    reason = f"{value_text}{': ' + best.note if best.note else ''}"
    missing = [r.signal for r in recs if r.replicas is None]
    if missing and best.replicas < current:
        return current, best.signal, best.value, f"holding: no data for {', '.join(missing)}; never scale down blind", recs
    return best.replicas, best.signal, best.value, reason, recs


def _stabilise(spec: AutoscalingSpec, history: tuple[tuple[datetime, int], ...], raw: int, current: int,
               now: datetime) -> tuple[int, str]:
    """The HPA's stabilizeRecommendationWithBehaviors: up to the lowest recommendation over the scale-up
    window, down to the highest over the scale-down window (the current raw one included)."""
    up_cutoff = now - timedelta(seconds=spec.scale_up.stabilization_window_seconds)
    down_cutoff = now - timedelta(seconds=spec.scale_down.stabilization_window_seconds)
    up = min([raw, *(r for t, r in history if t > up_cutoff)])
    down = max([raw, *(r for t, r in history if t > down_cutoff)])
    result = current
    if result < up:
        result = up
    if result > down:
        result = down
    note = ""
    if raw > current and result < raw:
        note = f"scale-up stabilised: lowest recommendation over {spec.scale_up.stabilization_window_seconds}s is {up}"
    elif raw < current and result > raw:
        note = (f"scale-down stabilised: highest recommendation over "
                f"{spec.scale_down.stabilization_window_seconds}s is {down}")
    return result, note


def _scale_up_limit(spec: AutoscalingSpec, events: tuple[ScaleEvent, ...], current: int, now: datetime) -> int:
    """The HPA's calculateScaleUpLimitWithScalingRules with selectPolicy Max over a Percent and a Pods policy."""
    cutoff = now - timedelta(seconds=spec.scale_up.period_seconds)
    added = sum(e.to_replicas - e.from_replicas for e in events if e.time > cutoff and e.to_replicas > e.from_replicas)
    start = max(0, current - added)
    by_percent = math.ceil(start * (1 + spec.scale_up.max_increase_percent / 100))
    by_pods = start + spec.scale_up.max_increase_pods
    return max(current, by_percent, by_pods)


def _last_scale(events: tuple[ScaleEvent, ...]) -> datetime | None:
    return events[-1].time if events else None


def decide(spec: AutoscalingSpec, state: AutoscalerState, samples: Samples, replicas: ReplicaCounts,
           now: datetime) -> ScaleDecision:
    """The replica count for the LAD now, why, and the state to remember; see the module docstring."""
    current = replicas.current
    raw, signal, value, reason, recs = _raw_recommendation(spec, samples, current)
    history = state.recommendations
    if raw is None:
        desired, notes = current, [reason]
    elif signal == BOUNDS:
        desired, notes = raw, [reason]
    else:
        # A first decision starts from the current count as if recommended now (the HPA's
        # recordInitialRecommendation): a fresh LAD, or one that just enabled autoscaling, does not drop at once.
        seen = state.recommendations or ((now, current),)
        history = (*seen, (now, raw))
        desired, note = _stabilise(spec, seen, raw, current, now)
        notes = [reason] + ([note] if note else [])
        limit = _scale_up_limit(spec, state.scale_events, current, now)
        if desired > limit:
            desired = limit
            notes.append(f"scale-up limited to {limit} per {spec.scale_up.period_seconds}s "
                         f"(+{spec.scale_up.max_increase_percent}% or +{spec.scale_up.max_increase_pods} pods)")
        if _clamp(desired, spec) != desired:
            notes.append(f"clamped to [{spec.min_replicas}, {spec.max_replicas}]")
            desired = _clamp(desired, spec)
        last = _last_scale(state.scale_events)
        delay = spec.scale_down.delay_seconds
        if desired < current and last is not None and (now - last).total_seconds() < delay:
            notes.append(f"scale-down delayed: last scale {int((now - last).total_seconds())}s ago (< {delay}s)")
            desired = current
    gpu_limited = replicas.pending_no_gpu > 0
    gpu_message = None
    if gpu_limited:
        gpu_message = (f"{replicas.pending_no_gpu} replica(s) Pending for lack of GPUs ({replicas.ready} ready)"
                       f"{': ' + replicas.pending_message if replicas.pending_message else ''}; "
                       f"not asking for more than {current}")
        cap = max(current, spec.min_replicas)  # minReplicas stays a floor, GPUs or not
        if desired > cap:
            notes.append(f"gpuLimited: wanted {desired}")
            desired = cap
    direction: Direction = "up" if desired > current else "down" if desired < current else "hold"
    text = "; ".join(notes)
    keep = max(spec.scale_up.stabilization_window_seconds, spec.scale_down.stabilization_window_seconds)
    history = tuple((t, r) for t, r in history if (now - t).total_seconds() <= keep)
    events = state.scale_events
    out_events: list[Event] = []
    if direction != "hold":
        events = (*events, ScaleEvent(now, current, desired, signal, value, text))
        shown = f"{signal} {value:.3g}" if value is not None and signal != BOUNDS else signal
        why = text if text.startswith(shown) else f"{shown}; {text}"  # the reason usually names the value already
        out_events.append(Event("Normal", "ScaledUp" if direction == "up" else "ScaledDown",
                                f"{current} -> {desired} replicas: {why}"))
    horizon = max(spec.scale_up.period_seconds, spec.scale_down.delay_seconds)
    pruned = tuple(e for e in events if (now - e.time).total_seconds() <= horizon)
    events = pruned or events[-1:]  # keep the last one: it is the scale-down delay's reference
    if gpu_limited and not state.gpu_limited and gpu_message:
        out_events.append(Event("Warning", "GPULimited", gpu_message))
    return ScaleDecision(
        current=current, desired=desired, direction=direction, signal=signal, value=value, reason=text,
        recommendations=recs, headroom_per_replica=headroom_per_replica(samples.replicas),
        gpu_limited=gpu_limited, gpu_limited_message=gpu_message,
        state=AutoscalerState(recommendations=history, scale_events=events, gpu_limited=gpu_limited),
        events=tuple(out_events),
    )


# --- status <-> state, and the hand-scale rule (how the reconciler plugs this in) -----------------------------


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def state_from_status(status: AutoscalingStatus | None) -> AutoscalerState:
    """The remembered windows from the stored status; unparsable entries are dropped, not fatal."""
    if status is None:
        return AutoscalerState()
    recs = tuple((t, r.replicas) for r in status.recommendations if (t := _parse_time(r.time)) is not None)
    events = tuple(
        ScaleEvent(t, e.from_replicas, e.to_replicas, e.signal, e.value, e.reason)
        for e in status.scale_events if (t := _parse_time(e.time)) is not None
    )
    return AutoscalerState(recommendations=recs, scale_events=events, gpu_limited=status.gpu_limited)


def _record(event: ScaleEvent) -> ScaleRecord:
    return ScaleRecord.model_validate({
        "time": event.time.isoformat(), "from": event.from_replicas, "to": event.to_replicas,
        "signal": event.signal, "value": event.value, "reason": event.reason,
    })


def status_of(decision: ScaleDecision, previous: AutoscalingStatus | None) -> AutoscalingStatus:
    """status.autoscaling after a decision: lastDecision is the last *change* (a hold keeps it)."""
    last = previous.last_decision if previous is not None else None
    if decision.state.scale_events:  # the newest is always kept (the scale-down delay's reference)
        last = _record(decision.state.scale_events[-1])
    headroom = decision.headroom_per_replica
    return AutoscalingStatus(
        desired_replicas=decision.desired,
        current_replicas=decision.current,
        last_decision=last,
        headroom_per_replica=round(headroom, 2) if headroom is not None else None,
        gpu_limited=decision.gpu_limited,
        gpu_limited_message=decision.gpu_limited_message,
        recommendations=[Recommendation(time=t.isoformat(), replicas=r) for t, r in decision.state.recommendations],
        scale_events=[_record(e) for e in decision.state.scale_events],
    )


def managed_replicas(spec_replicas: int, previous: AutoscalingStatus | None) -> int:
    """The count the autoscaler starts from: the one it last decided, not whatever spec.replicas says now
    (a hand scale is not an input); the first time, spec.replicas (decide() then clamps it)."""
    if previous is not None and previous.desired_replicas is not None:
        return previous.desired_replicas
    return spec_replicas


@dataclass(frozen=True)
class ReplicaWrite:
    """What the reconciler writes to spec.replicas (through the scale subresource), and the events to post."""

    replicas: int | None  # None: spec.replicas already says it
    events: tuple[Event, ...] = ()


def replicas_write(spec_replicas: int, previous: AutoscalingStatus | None, decision: ScaleDecision) -> ReplicaWrite:
    """With spec.autoscaling set the operator owns spec.replicas: a value other than the one it last decided
    is a hand scale (kubectl scale, an HPA) and is reverted with a Warning event naming the way out."""
    if spec_replicas == decision.desired:
        return ReplicaWrite(None)
    last = previous.desired_replicas if previous is not None else None
    events: tuple[Event, ...] = ()
    if last is not None and spec_replicas != last:
        events = (Event("Warning", "ScaleReverted",
                        f"spec.replicas was set to {spec_replicas} by hand, but spec.autoscaling owns it: reverted "
                        f"to {decision.desired} (remove spec.autoscaling to scale by hand or with an HPA/KEDA)"),)
    return ReplicaWrite(decision.desired, events)


def waiting_for_gpus(pending: Sequence[PendingPod], resource: str = "nvidia.com/gpu") -> ReplicaCounts:
    """The Pending pods that no node can take for lack of `resource` (the scheduler's reason Unschedulable,
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."), as ReplicaCounts' pending fields
    (current/ready are the caller's)."""
    stuck = [p for p in pending if p.reason == "Unschedulable" and f"Insufficient {resource}" in p.message]
    return ReplicaCounts(current=0, pending_no_gpu=len(stuck), pending_message=stuck[0].message if stuck else "")


@dataclass(frozen=True)
class AutoscalePlan:
    """One autoscaling pass, planned: what the reconciler writes and posts (in this order)."""

    decision: ScaleDecision
    status: AutoscalingStatus  # 1. status.autoscaling (written first: it is the record of the decision)
    replicas: int | None  # 2. spec.replicas through the scale subresource (None: already right)
    events: tuple[Event, ...]  # 3. ScaledUp/ScaledDown, GPULimited, ScaleReverted
    measured: bool = True  # decided on a new measurement (what the operator's decision metrics count)


def plan(spec: AutoscalingSpec, spec_replicas: int, previous: AutoscalingStatus | None, samples: Samples | None,
         ready: int, pending: Sequence[PendingPod], now: datetime) -> AutoscalePlan:
    """Everything the reconciler needs for a LAD with spec.autoscaling, from what it observed.

    `samples` None: nothing was measured since the last decision (a pass that something else triggered). The
    count then holds, while the bounds, the hand-scale revert and the GPU flag still apply, and the last
    measured headroom stays. Each measurement is decided on once only. A LAD-wide p95 recommends
    `current * p95 / target`; decided on twice, it would multiply the count twice."""
    gpus = waiting_for_gpus(pending)
    counts = ReplicaCounts(current=managed_replicas(spec_replicas, previous), ready=ready,
                           pending_no_gpu=gpus.pending_no_gpu, pending_message=gpus.pending_message)
    decision = decide(spec, state_from_status(previous), samples if samples is not None else Samples(), counts, now)
    write = replicas_write(spec_replicas, previous, decision)
    status = status_of(decision, previous)
    if samples is None and previous is not None:
        status.headroom_per_replica = previous.headroom_per_replica
    return AutoscalePlan(decision, status, write.replicas, (*write.events, *decision.events),
                         measured=samples is not None)
