"""The rollout state machine: `step(status, observation, spec, now) -> Decision` (pure; Argo's and Flagger's
canary semantics, KubeAI's plan-then-execute).

Everything the machine needs between passes is in `status.rollout` (phase, revisions, step, planned replicas,
counters, acknowledged requests), so a restarted operator continues where the last one stood. The decision
says which arms to run (revision, replicas), the router weights, the new status, the events (on transitions
only) and when to look again; the executor applies it. Measurements are taken by the executor between
passes, outside any lock: `analysis_due` says what to measure, and `step` consumes the verdict only if it
answers exactly that request.

Phases: Idle -> Progressing (weight steps, analysed) <-> Paused -> Promoting (stage `shift`: capacity moves to
the canary arm; stage `handover`: the stable arm takes the new revision back from it) -> Promoted (guard).
Failures: Progressing/Paused/Promoting -> RollingBack -> RolledBack; manual abort -> Aborted; a regression
during the post-promotion guard rolls back to the previous revision through the same shift and handover.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from localattn_operator import analysis
from localattn_operator.analysis import Verdict
from localattn_operator.duration import format_time, parse_duration, parse_time
from localattn_operator.models import (
    LocalAttnDeploymentSpec,
    Measurement,
    RolloutPhase,
    RolloutStatus,
)
from localattn_operator.rollout_control import pending_requests
from localattn_operator.rollout_transitions import PassBase, available_of, ready_of
from localattn_operator.rollout_types import (
    MAX_MEASUREMENTS,
    POLL_SECONDS,
    STEADY,
    WITH_CANARY,
    ArmObservation,
    ArmPlan,
    ConditionChange,
    Decision,
    Observation,
    analysis_due,
    initial_status,
    printer_columns,
    protected_revisions,
    step_interval,
)
from localattn_operator.status import Event
from localattn_operator.weights import (
    RouteWeights,
    Split,
    achieved_weight,
    capacity_weights,
    drain,
    route_weights,
    step_split,
    transfer,
)


class _Pass(PassBase):
    """The per-phase progress and the plan of one `step`."""

    # --- progress per phase ---
    def progress(self) -> None:
        st = self.st
        if self.n <= 0 and st.phase in WITH_CANARY:
            self.start_shift("Promoting", "NoReplicas", f"scaled to zero: nothing to analyse, promoting {st.canary_revision}")
        if st.phase == "Progressing" or (st.phase == "Paused" and self.on_weight_step()):
            self.progress_step()
        elif st.phase == "Paused":
            until = parse_time(st.pause_until)
            if until is not None and not st.paused_manually:
                if self.now >= until:
                    st.step_index += 1
                    self.enter_step("PauseEnded", f"pause of step {st.step_index} ended")
                else:
                    self.wake((until - self.now).total_seconds())
        elif st.phase in ("Promoting", "RollingBack") and st.stage is not None:
            self.progress_transfer()
        elif st.phase == "RollingBack":
            if ready_of(self.obs.stable, st.stable_revision) >= self.n and st.draining_revision is None:
                self.record("RolledBack", "RollbackComplete",
                            f"stable {st.stable_revision} serves all {self.n} replica(s)")
            else:
                self.wake(POLL_SECONDS)
        elif st.phase == "Promoted":
            self.progress_guard()

    def on_weight_step(self) -> bool:
        steps = self.steps()
        return self.st.step_index < len(steps) and steps[self.st.step_index].set_weight is not None

    def step_target(self) -> Split:
        if self.st.phase == "Paused" and not self.on_weight_step():
            return self.current
        return step_split(self.n, self.weight_before(self.st.step_index), self.surge, self.router)

    def progress_step(self) -> None:
        st, canary = self.st, self.obs.canary
        if canary is not None and canary.revision == st.canary_revision and canary.crash_looping:
            self.rollback("CanaryCrashLooping", f"canary {st.canary_revision} is crash-looping: {canary.message}")
            return
        target, ready = self.step_target(), self.ready()
        if st.settled_at is None:
            if transfer(self.n, self.surge, target, self.current, ready, self.obs.terminating) != target \
                    or ready.canary < target.canary \
                    or ready.stable < target.stable:
                waited = self.since(st.step_started_at)
                deadline = self.ro.progress_deadline_seconds
                late = canary is not None and canary.revision == st.canary_revision and canary.deadline_exceeded
                if (waited > deadline or late) and ready.canary < target.canary:
                    self.rollback("ProgressDeadlineExceeded",
                                  f"canary {ready.canary}/{target.canary} ready after {deadline}s")
                else:
                    self.wake(min(POLL_SECONDS, max(0.5, deadline - waited)))
                return
            st.settled_at = format_time(self.now)
            warmup = parse_duration(self.spec.analysis.initial_delay)
            st.next_analysis_at = self.at(warmup + step_interval(self.spec, st.step_index))
        due = analysis_due(st, self.spec, self.now)
        if due is None:
            self.wake(self.until(st.next_analysis_at))
            return
        verdict = self.obs.verdict
        if verdict is None or verdict.request != due:
            self.wake(1.0)  # the executor measures `due` and calls again
            return
        self.consume(verdict)

    def consume(self, verdict: Verdict) -> None:
        st, a = self.st, self.spec.analysis
        finished = format_time(verdict.request.end)
        st.last_analysis = analysis.verdict_status(verdict, finished)
        st.measurements = [*st.measurements, Measurement(
            phase=verdict.phase, started_at=format_time(verdict.request.start), finished_at=finished,
            step_index=st.step_index, canary_revision=st.canary_revision or "", message=verdict.summary(),
        )][-MAX_MEASUREMENTS:]
        st.counters, outcome, why = analysis.count(st.counters, verdict.phase, a,
                                                   provider_error=verdict.provider_error)
        if outcome == "rollback":
            self.rollback(f"Analysis{verdict.phase}", f"{why}: {verdict.summary()}")
        elif outcome == "advance" and not st.paused_manually:
            st.step_index += 1
            self.enter_step("AnalysisSuccessful", f"step {st.step_index} passed ({verdict.summary()})")
        else:
            interval = step_interval(self.spec, st.step_index)
            nxt = verdict.request.end + timedelta(seconds=interval)
            st.next_analysis_at = format_time(nxt if nxt > self.now else self.now + timedelta(seconds=interval))
            if verdict.phase != "Successful":
                self.events.append(Event("Warning", f"Analysis{verdict.phase}", f"{why}: {verdict.summary()}"))
            self.wake(self.until(st.next_analysis_at))

    def progress_transfer(self) -> None:
        st = self.st
        ready = self.ready()
        if st.stage == "shift":
            target = Split(0, self.n)
            canary = self.obs.canary
            if st.phase == "Promoting" and canary is not None and canary.revision == st.canary_revision \
                    and canary.crash_looping:
                self.rollback("CanaryCrashLooping", f"canary {st.canary_revision} crash-looping while promoting")
                return
            if self.current == target and ready.canary >= self.n and ready_of(self.obs.stable, st.stable_revision) == 0:
                if st.phase == "Promoting":
                    st.previous_revision = st.stable_revision
                    st.baseline = st.last_analysis.stable if st.last_analysis is not None else st.baseline
                st.stable_revision, st.stage = st.canary_revision, "handover"
                st.stable_replicas = 0
        if st.stage == "handover" and self.current == Split(self.n, 0) and ready.stable >= self.n:
            done: RolloutPhase = "Promoted" if st.phase == "Promoting" else "RolledBack"
            revision, st.canary_revision, st.stage = st.stable_revision, None, None
            st.step_started_at = st.settled_at = None
            if done == "Promoted":
                guard = self.ro.post_promotion_guard
                st.guard_until = self.at(parse_duration(guard)) if guard else None
                if self.spec.probe.enabled:
                    st.next_analysis_at = self.at(parse_duration(self.spec.analysis.interval))
                    self.wake(parse_duration(self.spec.analysis.interval))
            self.record(done, "Promoted" if done == "Promoted" else "RollbackComplete",
                        f"revision {revision} serves all {self.n} replica(s)"
                        + (f"; guard until {st.guard_until}" if done == "Promoted" and st.guard_until else ""))
            return
        deadline = self.ro.progress_deadline_seconds
        if self.since(st.step_started_at) > deadline and not st.message.startswith("stalled"):
            # capacity cannot move (no GPU for the next pod, pods not becoming ready): say so once, keep waiting;
            # serving capacity is intact, so waiting is safe, and an abort or a spec change still works
            st.message = (f"stalled: {st.stage} not done after {deadline}s (ready stable {ready.stable}, "
                          f"canary {ready.canary} of {self.n})")
            self.events.append(Event("Warning", "PromotionStalled", st.message))
        self.wake(POLL_SECONDS)

    def progress_guard(self) -> None:
        st = self.st
        due = analysis_due(st, self.spec, self.now)
        verdict = self.obs.verdict
        if due is None or verdict is None or verdict.request != due:
            self.wake(1.0 if due is not None else self.until(st.next_analysis_at))
            return
        st.last_analysis = analysis.verdict_status(verdict, format_time(verdict.request.end))
        st.next_analysis_at = self.at(parse_duration(self.spec.analysis.interval))
        self.wake(parse_duration(self.spec.analysis.interval))
        guarding = (until := parse_time(st.guard_until)) is not None and self.now < until
        if verdict.phase == "Failed" and guarding and st.previous_revision in self.obs.recorded_revisions:
            bad, st.canary_revision, st.rejected_revision = st.stable_revision, st.previous_revision, st.stable_revision
            st.guard_until = st.next_analysis_at = None
            text = f"quality regressed within the guard: {verdict.summary()}; back to {st.previous_revision}"
            self.conditions.append(ConditionChange("Degraded", True, "RolledBack", text))
            self.start_shift("RollingBack", "GuardRollback", f"{bad}: {text}", warning=True)
        elif verdict.phase == "Failed" and not st.quality_drift:
            st.quality_drift = True
            self.conditions.append(ConditionChange("QualityDrift", True, "QualityRegressed", verdict.summary()))
            self.events.append(Event("Warning", "QualityDrift", f"stable {st.stable_revision}: {verdict.summary()}"))
        elif verdict.phase == "Successful" and st.quality_drift:
            st.quality_drift = False
            self.conditions.append(ConditionChange("QualityDrift", False, "QualityRecovered", verdict.summary()))
            self.events.append(Event("Normal", "QualityRecovered", f"stable {st.stable_revision}: {verdict.summary()}"))

    # --- the plan ---
    def plan(self) -> tuple[tuple[ArmPlan, ...], RouteWeights]:
        st, ready = self.st, self.ready()
        stable_rev = st.stable_revision or ""
        if st.phase in STEADY or (st.phase == "RollingBack" and st.stage is None) or st.canary_revision is None:
            st.desired_weight = 0
            if st.draining_revision is not None:
                ready = Split(ready.stable, ready_of(self.obs.canary, st.draining_revision))
                planned = drain(self.n, self.surge, self.current, ready)
                st.stable_replicas, st.canary_replicas = planned.stable, planned.canary
                if planned.canary > 0:
                    self.wake(POLL_SECONDS)
                    return ((ArmPlan("canary", st.draining_revision, planned.canary),
                             ArmPlan("stable", stable_rev, planned.stable)), RouteWeights(100, 0))
                st.draining_revision = None
            st.stable_replicas, st.canary_replicas = self.n, 0
            return (ArmPlan("stable", stable_rev, self.n),), RouteWeights(100, 0)
        if st.stage is not None:
            target = Split(0, self.n) if st.stage == "shift" else Split(self.n, 0)
            st.desired_weight = 100
            weights = capacity_weights(ready)
        else:
            target = self.step_target()
            st.desired_weight = self.weight_before(st.step_index)
            available = Split(available_of(self.obs.stable, st.stable_revision),
                              available_of(self.obs.canary, st.canary_revision))
            weights = route_weights(st.desired_weight, available, target)
        current = self.current
        planned = transfer(self.n, self.surge, target, current, ready, self.obs.terminating)
        st.stable_replicas, st.canary_replicas = planned.stable, planned.canary
        arms = (ArmPlan("stable", stable_rev, planned.stable), ArmPlan("canary", st.canary_revision, planned.canary))
        # the shrinking arm first, so that its GPUs are freed for the growing one (maxSurge 0)
        return (arms[::-1] if planned.canary < current.canary else arms), weights


def step(previous: RolloutStatus | None, obs: Observation, spec: LocalAttnDeploymentSpec | None,
         now: datetime) -> Decision:
    """One decision. `spec` is None when the spec is invalid: everything is held as last planned."""
    prev = previous if previous is not None else initial_status(None)
    if spec is None or obs.spec_revision is None:
        return held(prev)
    p = _Pass(prev, obs, spec, now)
    if p.st.stable_revision is None:
        p.st.stable_revision = obs.spec_revision
        p.record("Idle", "Initialized", f"revision {obs.spec_revision} is stable")
        p.events.clear()  # status.py announces the creation itself
    for request in pending_requests(obs.annotations, p.st.acknowledged):
        p.manual(request)
    p.follow_spec(obs.spec_revision)
    p.progress()
    arms, weights = p.plan()
    ready = p.ready()
    p.st.achieved_weight = obs.router_weight if p.router == "gatewayAPI" and obs.router_weight is not None \
        else achieved_weight(ready)
    return Decision(arms, weights, p.st, tuple(p.events), tuple(p.conditions), p.requeue)


def held(previous: RolloutStatus, requeue_after: float | None = None) -> Decision:
    """Everything as last planned: the arms, the weights, the status (an invalid spec; a failing router)."""
    arms = tuple(a for a in (ArmPlan("stable", previous.stable_revision or "", previous.stable_replicas),
                             ArmPlan("canary", previous.canary_revision or previous.draining_revision or "",
                                     previous.canary_replicas))
                 if a.revision)
    return Decision(arms, RouteWeights(100 - previous.desired_weight, previous.desired_weight), previous,
                    requeue_after=requeue_after)


def in_flight(status: RolloutStatus) -> bool:
    """A canary runs, drains or is being promoted or rolled back: the route's weights matter."""
    return status.phase not in STEADY or status.canary_revision is not None or status.draining_revision is not None


def hold_for_router(previous: RolloutStatus, decision: Decision, router_error: str | None) -> Decision:
    """While the gatewayAPI router fails (the route or its CRD missing, the patch refused, the weights not read
    back) a rollout does not move: no step, no promotion, no rollback, no arm scaled, until the route works
    again (retried every POLL_SECONDS). Traffic is whatever the route carries, so moving pods under it could
    send requests to pods that are gone. A LAD with no rollout before or after the pass is not held (its route
    carries 100/0 however it is, and a scale change still applies)."""
    if router_error is None or not (in_flight(previous) or in_flight(decision.status)):
        return decision
    return held(previous, POLL_SECONDS)


__all__ = ["ArmObservation", "ArmPlan", "ConditionChange", "Decision", "Observation", "analysis_due",
           "held", "hold_for_router", "in_flight", "initial_status", "printer_columns", "protected_revisions", "step"]
