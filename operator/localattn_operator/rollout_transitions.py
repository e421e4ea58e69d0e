"""The rollout's transitions: what a manual request, a spec change or a verdict does to the status (pure).

`rollout.step` runs one `_Pass` (this base plus the per-phase progress and the plan): bookkeeping (history,
events, requeue), entering a step, starting a promotion's shift, rolling back, and the reactions to the
control annotations and to a new spec revision.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from localattn_operator.duration import format_time, parse_duration, parse_time
from localattn_operator.models import (
    LocalAttnDeploymentSpec,
    RolloutDecisionRecord,
    RolloutPhase,
    RolloutStatus,
    RolloutStep,
)
from localattn_operator.rollout_control import ManualRequest
from localattn_operator.rollout_types import (
    MAX_HISTORY,
    STEADY,
    WITH_CANARY,
    ArmObservation,
    ConditionChange,
    Observation,
    rollout_spec,
)
from localattn_operator.status import Event
from localattn_operator.weights import Split, resolve_surge


def ready_of(arm: ArmObservation | None, revision: str | None) -> int:
    return arm.ready if arm is not None and revision is not None and arm.revision == revision else 0


def available_of(arm: ArmObservation | None, revision: str | None) -> int:
    return arm.available if arm is not None and revision is not None and arm.revision == revision else 0


class PassBase:
    """One call of `step`: a working copy of the status plus what the pass emits, and the transitions."""

    def __init__(self, previous: RolloutStatus, obs: Observation, spec: LocalAttnDeploymentSpec, now: datetime):
        self.st = previous.model_copy(deep=True)
        self.obs, self.spec, self.now = obs, spec, now
        self.ro = rollout_spec(spec)
        self.n = spec.replicas
        self.surge = resolve_surge(self.ro.max_surge, self.n)
        self.router: Literal["replicas", "gatewayAPI"] = "gatewayAPI" if self.ro.router.gateway_api else "replicas"
        self.events: list[Event] = []
        self.conditions: list[ConditionChange] = []
        self.requeue: float | None = None

    # --- bookkeeping ---
    def at(self, seconds: float) -> str:
        return format_time(self.now + timedelta(seconds=seconds))

    def until(self, stamp: str | None) -> float | None:
        t = parse_time(stamp)
        return None if t is None else (t - self.now).total_seconds()

    def since(self, stamp: str | None) -> float:
        t = parse_time(stamp)
        return 0.0 if t is None else (self.now - t).total_seconds()

    def wake(self, seconds: float | None) -> None:
        if seconds is not None:
            seconds = max(0.5, seconds)
            self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def record(self, to: RolloutPhase, reason: str, message: str, warning: bool = False,
               event_reason: str | None = None) -> None:
        st = self.st
        entry = RolloutDecisionRecord.model_validate(
            {"time": format_time(self.now), "from": st.phase, "to": to, "reason": reason, "message": message})
        st.history = [*st.history, entry][-MAX_HISTORY:]
        st.phase, st.message, st.last_transition_at = to, message, format_time(self.now)
        self.events.append(Event("Warning" if warning else "Normal", event_reason or reason, message))

    @property
    def current(self) -> Split:
        return Split(self.st.stable_replicas, self.st.canary_replicas)

    def ready(self) -> Split:
        return Split(ready_of(self.obs.stable, self.st.stable_revision), ready_of(self.obs.canary, self.st.canary_revision))

    def steps(self) -> list[RolloutStep]:
        return self.ro.effective_steps()

    def weight_before(self, index: int) -> int:
        weights = [s.set_weight for s in self.steps()[: index + 1] if s.set_weight is not None]
        return weights[-1] if weights else 0

    # --- transitions ---
    def start_rollout(self, revision: str, reason: str, message: str) -> None:
        st = self.st
        st.canary_revision, st.rejected_revision, st.stage = revision, None, None
        st.step_index, st.started_at, st.guard_until, st.quality_drift = 0, format_time(self.now), None, False
        st.counters = type(st.counters)()
        st.paused_manually = False
        self.conditions.append(ConditionChange("Degraded", False, "RolloutStarted", message))
        self.enter_step(reason, message)

    def enter_step(self, reason: str, message: str) -> None:
        st, steps = self.st, self.steps()
        st.step_started_at, st.settled_at, st.next_analysis_at, st.pause_until = format_time(self.now), None, None, None
        if self.n <= 0 or st.step_index >= len(steps):
            self.start_shift("Promoting", reason if self.n > 0 else "NoReplicas",
                             f"{message}; promoting {st.canary_revision}" if self.n > 0 else
                             f"{message}; no replicas to analyse, promoting {st.canary_revision}")
            return
        step = steps[st.step_index]
        where = f"step {st.step_index + 1}/{len(steps)}"
        if step.pause is not None:
            if step.pause.duration:
                st.pause_until = self.at(parse_duration(step.pause.duration))
            until = f"until {st.pause_until}" if st.pause_until else "until localattn.dev/resume or promote"
            self.record("Paused", reason, f"{message}; {where}: paused {until}")
        else:
            self.record("Progressing", reason, f"{message}; {where}: canary {st.canary_revision} at {step.set_weight}%")

    def start_shift(self, phase: RolloutPhase, reason: str, message: str, warning: bool = False) -> None:
        self.st.stage, self.st.step_started_at, self.st.next_analysis_at = "shift", format_time(self.now), None
        self.st.paused_manually, self.st.pause_until = False, None
        self.record(phase, reason, message, warning)

    def rollback(self, reason: str, message: str, aborted: bool = False) -> None:
        st = self.st
        st.draining_revision = st.canary_revision if st.canary_replicas > 0 else None
        st.rejected_revision, st.canary_revision, st.stage = st.canary_revision, None, None
        st.next_analysis_at = st.pause_until = st.step_started_at = st.settled_at = None
        st.paused_manually = False
        text = f"rolled back to {st.stable_revision}: {message}"
        # The event reason is the outcome (filterable: reason=RolledBack); the cause is in the message and history.
        self.record("Aborted" if aborted else "RollingBack", reason, f"{reason}: {text}", warning=True,
                    event_reason="RolloutAborted" if aborted else "RolledBack")
        self.conditions.append(ConditionChange("Degraded", True, "Aborted" if aborted else "RolledBack", text))

    # --- manual requests ---
    def manual(self, request: ManualRequest) -> None:
        st, verb = self.st, request.verb
        setattr(st.acknowledged, verb, request.value)
        with_canary = st.phase in WITH_CANARY or (st.phase == "Promoting" and st.stage == "shift")
        if verb == "abort" and with_canary:
            self.rollback("RolloutAborted", "aborted by localattn.dev/abort", aborted=True)
        elif verb == "pause" and st.phase in WITH_CANARY:
            st.paused_manually = True
            if st.phase == "Progressing":
                self.record("Paused", "RolloutPaused", "paused by localattn.dev/pause")
            else:
                self.events.append(Event("Normal", "RolloutPaused", "paused by localattn.dev/pause"))
        elif verb == "resume" and st.phase == "Paused":
            st.paused_manually = False
            step = self.steps()[st.step_index] if st.step_index < len(self.steps()) else None
            if step is not None and step.pause is not None:
                st.step_index += 1
                self.enter_step("RolloutResumed", "resumed by localattn.dev/resume")
            else:
                self.record("Progressing", "RolloutResumed", "resumed by localattn.dev/resume")
        elif verb == "resume" and st.phase in ("RolledBack", "Aborted") and st.rejected_revision:
            self.events.append(Event("Normal", "RolloutRetried", f"retrying {st.rejected_revision} (localattn.dev/resume)"))
            st.rejected_revision = None
        elif verb == "promote" and st.phase in WITH_CANARY:
            self.start_shift("Promoting", "PromotedManually", f"promoting {st.canary_revision} now (localattn.dev/promote)")
        else:
            self.events.append(Event("Normal", "RequestIgnored", f"localattn.dev/{verb}: nothing to do in phase {st.phase}"))

    # --- spec changes ---
    def follow_spec(self, revision: str) -> None:
        st = self.st
        mid = st.phase in WITH_CANARY or (st.phase == "Promoting" and st.stage == "shift")
        if mid and revision == st.stable_revision:
            st.draining_revision = st.canary_revision if st.canary_replicas > 0 else None
            st.canary_revision, st.stage, st.next_analysis_at, st.pause_until = None, None, None, None
            st.step_started_at = st.settled_at = None
            st.paused_manually = False
            self.record("Idle", "RolloutCancelled", f"spec reverted to stable revision {revision}; canary removed")
        elif mid and revision != st.canary_revision:
            self.start_rollout(revision, "RolloutSuperseded", f"revision {revision} supersedes canary {st.canary_revision}")
        elif st.phase in STEADY and revision not in (st.stable_revision, st.rejected_revision):
            self.start_rollout(revision, "RolloutStarted", f"rolling out {revision} (stable {st.stable_revision})")
        elif st.phase in ("RolledBack", "Aborted") and revision == st.stable_revision:
            st.rejected_revision = None
            self.conditions.append(ConditionChange("Degraded", False, "SpecReverted", f"spec is {revision} again"))
            self.record("Idle", "SpecReverted", f"spec reverted to stable revision {revision}")
