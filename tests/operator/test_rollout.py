"""The rollout state machine, one transition per row (pure; no cluster): `step(status, observation, spec, now)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localattn_operator.analysis import FIGURES, AnalysisRequest, ArmFigures, Figures, Verdict, Window, assess
from localattn_operator.duration import format_time
from localattn_operator.models import (
    AnalysisCounters,
    ArmAnalysisStatus,
    LastAnalysisStatus,
    LocalAttnDeploymentSpec,
    RolloutStatus,
)
from localattn_operator.rollout import (
    ArmObservation,
    ArmPlan,
    Observation,
    analysis_due,
    printer_columns,
    protected_revisions,
    step,
)
from localattn_operator.validation import validate_spec

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
A, B, C = "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"


def at(seconds: float) -> str:
    return format_time(T0 + timedelta(seconds=seconds))


def make_spec(rollout: dict[str, Any] | None = None, **extra: Any) -> LocalAttnDeploymentSpec:
    raw: dict[str, Any] = {"model": {"uri": "pvc://models/llm"}, "replicas": 4,
                           "analysis": {"interval": "1m", "minRequests": 1}, **extra}
    if rollout is not None:
        raw["rollout"] = rollout
    return validate_spec(raw)


STEPS = {"steps": [{"setWeight": 10}, {"setWeight": 50}], "maxSurge": 1}
SPEC = make_spec(STEPS)
PAUSE = make_spec({"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}], "maxSurge": 1})
TIMED = make_spec({"steps": [{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 50}], "maxSurge": 1})
GUARD = make_spec({**STEPS, "postPromotionGuard": "10m"}, probe={"enabled": True},
                  analysis={"interval": "1m", "minRequests": 1, "thresholds": {"maxExactMatchDrop": 0.05}})
DIRECT = make_spec(None)
WARMUP = make_spec(STEPS, analysis={"interval": "1m", "initialDelay": "40s", "minRequests": 1})


def progressing(**kw: Any) -> RolloutStatus:
    base: dict[str, Any] = dict(phase="Progressing", stable_revision=A, canary_revision=B, step_index=0,
                                step_started_at=at(0), stable_replicas=4, canary_replicas=1, desired_weight=10)
    return RolloutStatus(**{**base, **kw})


def arm(rev: str | None, ready: int, replicas: int | None = None, **kw: Any) -> ArmObservation:
    return ArmObservation(rev, replicas if replicas is not None else ready, ready, ready, **kw)


def obs(spec_rev: str | None, stable: ArmObservation | None = None, canary: ArmObservation | None = None,
        **kw: Any) -> Observation:
    return Observation(spec_rev, stable if stable is not None else arm(A, 4), canary, **kw)


def canary_verdict(request: AnalysisRequest, canary: Figures, stable: Figures | None = None) -> Verdict:
    stable = stable or Figures(requests=100, p95_e2e=1.0, p95_ttft=0.2, p95_itl=0.05, error_rate=0.0,
                               probe_exact_match=0.9)
    window = Window(request, ArmFigures(request.stable_revision, stable),
                    ArmFigures(request.canary_revision or request.stable_revision, canary))
    return assess(window, SPEC.analysis, probe=False, paired=False)


GOOD = Figures(requests=100, p95_e2e=1.0, p95_ttft=0.2, p95_itl=0.05, error_rate=0.0)
SLOW = Figures(requests=100, p95_e2e=3.0, p95_ttft=0.2, p95_itl=0.05, error_rate=0.0)
DUE = AnalysisRequest("canary", T0, T0 + timedelta(seconds=60), A, B, 0)


@dataclass
class Row:
    name: str
    previous: RolloutStatus | None
    observation: Observation
    spec: LocalAttnDeploymentSpec | None = field(default_factory=lambda: SPEC)
    now: float = 0
    phase: str = ""
    arms: tuple[ArmPlan, ...] | None = None
    events: tuple[str, ...] = ()
    expect: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[tuple[str, bool, str], ...] = ()
    requeue: float | str | None = "any"


def settled(**kw: Any) -> RolloutStatus:
    return progressing(**{"settled_at": at(0), "next_analysis_at": at(60), **kw})


ROWS = [
    Row("first revision becomes stable", None, obs(A), phase="Idle", arms=(ArmPlan("stable", A, 4),),
        expect={"stable_revision": A}, requeue=None),
    Row("a pre-rollout LAD (migrated) with a new spec starts a rollout", RolloutStatus(stable_revision=A), obs(B),
        phase="Progressing", arms=(ArmPlan("stable", A, 4), ArmPlan("canary", B, 1)), events=("RolloutStarted",),
        expect={"canary_revision": B, "step_index": 0, "desired_weight": 10}, requeue=5.0,
        conditions=(("Degraded", False, "RolloutStarted"),)),
    Row("steady: nothing to do", RolloutStatus(stable_revision=A, stable_replicas=4), obs(A), phase="Idle",
        arms=(ArmPlan("stable", A, 4),), requeue=None),
    Row("canary not ready yet: wait", progressing(), obs(B, canary=arm(B, 0, 1)), phase="Progressing",
        expect={"settled_at": None}, requeue=5.0),
    Row("canary ready: the analysis window starts", progressing(), obs(B, canary=arm(B, 1)), now=10,
        phase="Progressing", expect={"settled_at": at(10), "next_analysis_at": at(70), "achieved_weight": 20},
        requeue=60.0),
    Row("with an initial delay the first window starts that long after the canary is ready", progressing(),
        obs(B, canary=arm(B, 1)), spec=WARMUP, now=10, phase="Progressing",
        expect={"settled_at": at(10), "next_analysis_at": at(110)}, requeue=100.0),
    Row("analysis due but not measured: ask again soon", settled(), obs(B, canary=arm(B, 1)), now=61,
        phase="Progressing", expect={"step_index": 0}, requeue=1.0),
    Row("a verdict for another window is ignored", settled(), obs(B, canary=arm(B, 1),
        verdict=canary_verdict(AnalysisRequest("canary", T0, T0 + timedelta(seconds=60), A, C, 0), GOOD)),
        now=61, phase="Progressing", expect={"step_index": 0, "measurements": []}, requeue=1.0),
    Row("successful analysis: next step", settled(), obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, GOOD)),
        now=61, phase="Progressing", events=("AnalysisSuccessful",),
        expect={"step_index": 1, "settled_at": None, "desired_weight": 50}),
    Row("failed analysis: rolled back with the numbers", settled(),
        obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, SLOW)), now=61, phase="RollingBack",
        arms=(ArmPlan("stable", A, 4),), events=("RolledBack",), conditions=(("Degraded", True, "RolledBack"),),
        expect={"rejected_revision": B, "canary_revision": None}),
    Row("failure below failureLimit: hold and measure again", settled(),
        obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, SLOW)), now=61,
        spec=make_spec(STEPS, analysis={"interval": "1m", "minRequests": 1, "failureLimit": 1}),
        phase="Progressing", events=("AnalysisFailed",), expect={"next_analysis_at": at(120), "step_index": 0},
        requeue=59.0),
    Row("provider error: hold (not a failure)", settled(),
        obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, Figures(requests=100))), now=61,
        phase="Progressing", events=("AnalysisInconclusive",), expect={"step_index": 0}),
    Row("rolling back: done once stable serves all replicas", RolloutStatus(phase="RollingBack", stable_revision=A,
        rejected_revision=B, stable_replicas=4), obs(B), phase="RolledBack", events=("RollbackComplete",),
        requeue=None),
    Row("rolled back: the rejected spec is not retried", RolloutStatus(phase="RolledBack", stable_revision=A,
        rejected_revision=B, stable_replicas=4), obs(B), phase="RolledBack", arms=(ArmPlan("stable", A, 4),)),
    Row("rolled back: a newer spec starts again", RolloutStatus(phase="RolledBack", stable_revision=A,
        rejected_revision=B, stable_replicas=4), obs(C), phase="Progressing", events=("RolloutStarted",),
        expect={"canary_revision": C, "rejected_revision": None}),
    Row("rolled back: reverting the spec clears it", RolloutStatus(phase="RolledBack", stable_revision=A,
        rejected_revision=B, stable_replicas=4), obs(A), phase="Idle", events=("SpecReverted",),
        conditions=(("Degraded", False, "SpecReverted"),)),
    Row("canary never ready before the deadline: rolled back", progressing(), obs(B, canary=arm(B, 0, 1)), now=601,
        phase="RollingBack", events=("RolledBack",), expect={"rejected_revision": B}),
    Row("the canary Deployment reports ProgressDeadlineExceeded: rolled back", progressing(),
        obs(B, canary=arm(B, 0, 1, deadline_exceeded=True)), now=30, phase="RollingBack", events=("RolledBack",)),
    Row("crash-looping canary: rolled back at once", progressing(),
        obs(B, canary=arm(B, 0, 1, crash_looping=True, message="back-off 40s restarting vllm")), now=30,
        phase="RollingBack", events=("RolledBack",)),
    Row("a newer spec supersedes the canary", settled(counters=AnalysisCounters(failed=1)),
        obs(C, canary=arm(B, 1)), now=30, phase="Progressing", events=("RolloutSuperseded",),
        expect={"canary_revision": C, "step_index": 0, "settled_at": None, "counters": AnalysisCounters()}),
    Row("reverting the spec mid-rollout aborts without touching stable", settled(), obs(A, canary=arm(B, 1)),
        phase="Idle", arms=(ArmPlan("stable", A, 4),), events=("RolloutCancelled",),
        expect={"canary_revision": None}),
    Row("an indefinite pause step waits for a manual resume", settled(),
        obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, GOOD)), spec=PAUSE, now=61, phase="Paused",
        events=("AnalysisSuccessful",),
        expect={"step_index": 1, "pause_until": None}, requeue=None),
    Row("a timed pause step ends by itself", progressing(phase="Paused", step_index=1, pause_until=at(30)),
        obs(B, canary=arm(B, 1)), spec=TIMED, now=31, phase="Progressing", events=("PauseEnded",),
        expect={"step_index": 2}),
    Row("a timed pause step holds the split until then", progressing(phase="Paused", step_index=1, pause_until=at(30)),
        obs(B, canary=arm(B, 1)), spec=TIMED, now=10, phase="Paused",
        arms=(ArmPlan("stable", A, 4), ArmPlan("canary", B, 1)), requeue=20.0),
    Row("resume leaves a pause step", progressing(phase="Paused", step_index=1),
        obs(B, canary=arm(B, 1), annotations={"localattn.dev/resume": "2026-12-01T12:00:05Z"}), spec=PAUSE, now=10,
        phase="Progressing", events=("RolloutResumed",), expect={"step_index": 2, "paused_manually": False}),
    Row("promote now skips the remaining steps", settled(),
        obs(B, canary=arm(B, 1), annotations={"localattn.dev/promote": "x1"}), now=5, phase="Promoting",
        events=("PromotedManually",), expect={"stage": "shift", "desired_weight": 100}),
    Row("abort: all traffic to stable, canary removed", settled(),
        obs(B, canary=arm(B, 1), annotations={"localattn.dev/abort": "x1"}), now=5, phase="Aborted",
        arms=(ArmPlan("stable", A, 4),), events=("RolloutAborted",), conditions=(("Degraded", True, "Aborted"),),
        expect={"rejected_revision": B}),
    Row("a manual pause holds even a successful step", settled(paused_manually=True, phase="Paused"),
        obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, GOOD)), now=61, phase="Paused",
        expect={"step_index": 0, "next_analysis_at": at(120)}),
    Row("a manual pause still rolls back on failure", settled(paused_manually=True, phase="Paused"),
        obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, SLOW)), now=61, phase="RollingBack",
        events=("RolledBack",)),
    Row("pause then resume (ordered by time) ends running", settled(),
        obs(B, canary=arm(B, 1), annotations={"localattn.dev/resume": "2026-12-01T12:00:02Z",
                                              "localattn.dev/pause": "2026-12-01T12:00:01Z"}), now=5,
        phase="Progressing", events=("RolloutPaused", "RolloutResumed")),
    Row("an acknowledged request is not handled again", settled(acknowledged={"abort": "x1"}),
        obs(B, canary=arm(B, 1), annotations={"localattn.dev/abort": "x1"}), now=5, phase="Progressing"),
    Row("a request with nothing to do is acknowledged by an event", RolloutStatus(stable_revision=A, stable_replicas=4),
        obs(A, annotations={"localattn.dev/promote": "x"}), phase="Idle", events=("RequestIgnored",),
        expect={"acknowledged": {"promote": "x", "abort": None, "pause": None, "resume": None}}),
    Row("resume after a rollback retries the revision", RolloutStatus(phase="RolledBack", stable_revision=A,
        rejected_revision=B, stable_replicas=4), obs(B, annotations={"localattn.dev/resume": "r"}),
        phase="Progressing", events=("RolloutRetried", "RolloutStarted")),
    Row("the last step passed: promotion begins", settled(step_index=1, desired_weight=50, canary_replicas=3,
        stable_replicas=2, next_analysis_at=at(60)),
        obs(B, stable=arm(A, 2), canary=arm(B, 3), verdict=canary_verdict(
            AnalysisRequest("canary", T0, T0 + timedelta(seconds=60), A, B, 1), GOOD)), now=61,
        phase="Promoting", events=("AnalysisSuccessful",), expect={"stage": "shift"},
        # the stable pod this pass removes still holds its GPU while it terminates: the canary grows next pass
        arms=(ArmPlan("stable", A, 1), ArmPlan("canary", B, 3))),
    Row("shift: stable gives up only what the canary replaced", progressing(phase="Promoting", stage="shift",
        stable_replicas=4, canary_replicas=1), obs(B, stable=arm(A, 4), canary=arm(B, 1)), phase="Promoting",
        arms=(ArmPlan("stable", A, 3), ArmPlan("canary", B, 1))),
    Row("shift done: the stable arm takes the new revision", progressing(phase="Promoting", stage="shift",
        stable_replicas=0, canary_replicas=4), obs(B, stable=arm(A, 0), canary=arm(B, 4)), phase="Promoting",
        arms=(ArmPlan("stable", B, 1), ArmPlan("canary", B, 4)),  # the canary keeps serving until then
        expect={"stage": "handover", "stable_revision": B, "previous_revision": A}),
    Row("handover done: promoted", progressing(phase="Promoting", stage="handover", stable_revision=B,
        stable_replicas=4, canary_replicas=0), obs(B, stable=arm(B, 4), canary=arm(B, 0)), phase="Promoted",
        arms=(ArmPlan("stable", B, 4),), events=("Promoted",), expect={"canary_revision": None}),
    Row("promoted with a guard: quality is watched", progressing(phase="Promoting", stage="handover",
        stable_revision=B, previous_revision=A, stable_replicas=4, canary_replicas=0),
        obs(B, stable=arm(B, 4), canary=arm(B, 0)), spec=GUARD, phase="Promoted", events=("Promoted",),
        expect={"guard_until": at(600), "next_analysis_at": at(60)}, requeue=60.0),
    Row("no spec.rollout: a new revision is promoted at once, capacity kept", RolloutStatus(stable_revision=A,
        stable_replicas=4), obs(B), spec=DIRECT, phase="Promoting", events=("RolloutStarted",),
        arms=(ArmPlan("stable", A, 4), ArmPlan("canary", B, 1))),
    Row("invalid spec: everything held as last planned", settled(), obs(None, canary=arm(B, 1)), spec=None,
        phase="Progressing", arms=(ArmPlan("stable", A, 4), ArmPlan("canary", B, 1)), requeue=None),
    Row("invalid spec while a rolled-back canary drains: it keeps serving", RolloutStatus(phase="RollingBack",
        stable_revision=A, draining_revision=B, stable_replicas=6, canary_replicas=4), obs(None), spec=None,
        phase="RollingBack", arms=(ArmPlan("stable", A, 6), ArmPlan("canary", B, 4))),
    Row("scaled to zero: nothing to analyse, promoted", RolloutStatus(stable_revision=A), obs(B, stable=arm(A, 0)),
        spec=make_spec(STEPS, replicas=0), phase="Promoted", events=("NoReplicas", "Promoted")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_transition(row: Row) -> None:
    spec = row.spec
    decision = step(row.previous, row.observation, spec, T0 + timedelta(seconds=row.now))
    status = decision.status
    assert status.phase == row.phase, status.message
    if row.arms is not None:
        assert decision.arms == row.arms
    assert tuple(e.reason for e in decision.events) == row.events
    for key, value in row.expect.items():
        got = getattr(status, key)
        assert (got.model_dump() if hasattr(got, "model_dump") and isinstance(value, dict) else got) == value, key
    for type_, value, reason in row.conditions:
        assert any(c.type == type_ and c.status == value and c.reason == reason for c in decision.conditions), \
            decision.conditions
    if row.requeue != "any":
        assert decision.requeue_after == row.requeue


def test_rollback_event_carries_the_measured_numbers() -> None:
    d = step(settled(), obs(B, canary=arm(B, 1), verdict=canary_verdict(DUE, SLOW)), SPEC, T0 + timedelta(seconds=61))
    warning = next(e for e in d.events if e.reason == "RolledBack")
    assert warning.type == "Warning"
    assert "latency.e2e" in warning.message and "canary 3, stable 1, threshold 20" in warning.message
    assert d.status.measurements[-1].phase == "Failed" and d.status.last_analysis is not None
    assert d.status.history[-1].to_phase == "RollingBack" and d.status.history[-1].reason == "AnalysisFailed"


def test_a_provider_error_window_is_inconclusive_and_holds_without_charging() -> None:
    down = dict.fromkeys(FIGURES, "prometheus: connection refused")
    window = Window(DUE, ArmFigures(A, Figures(), {}, down), ArmFigures(B, Figures(), {}, down))
    verdict = assess(window, SPEC.analysis, probe=False, paired=False)
    d = step(settled(), obs(B, canary=arm(B, 1), verdict=verdict), SPEC, T0 + timedelta(seconds=61))
    assert d.status.phase == "Progressing" and d.status.step_index == 0 and d.status.next_analysis_at == at(120)
    (event,) = d.events
    assert (event.type, event.reason) == ("Warning", "AnalysisInconclusive")
    assert event.message.startswith("holding (provider error 1/4 in a row): latency.e2e: provider error: "
                                    f"{B}: prometheus: connection refused"), event.message
    assert d.status.measurements[-1].phase == "Inconclusive" and d.status.last_analysis is not None
    assert d.status.last_analysis.phase == "Inconclusive"
    assert {g.phase for g in d.status.last_analysis.gates} == {"Error"}  # which query, and the provider's message
    c = d.status.counters
    assert (c.errors, c.consecutive_errors, c.inconclusive, c.failed) == (1, 1, 0, 0)


def test_guard_regression_rolls_back_to_the_previous_revision() -> None:
    promoted = RolloutStatus(phase="Promoted", stable_revision=B, previous_revision=A, guard_until=at(600),
                             next_analysis_at=at(60), stable_replicas=4,
                             baseline=ArmAnalysisStatus(revision=A, probe_exact_match=0.9))
    assert analysis_due(promoted.model_copy(update={"baseline": None}), GUARD, T0 + timedelta(seconds=61)) is None
    due = analysis_due(promoted, GUARD, T0 + timedelta(seconds=61))
    assert due is not None and due.kind == "guard" and due.stable_revision == B
    baseline = ArmFigures(A, Figures(probe_exact_match=0.9))
    bad = ArmFigures(B, Figures(probe_exact_match=0.6))
    from localattn_operator.analysis import assess_guard

    verdict = assess_guard(Window(due, baseline, bad), GUARD.analysis)
    o = Observation(B, arm(B, 4), None, recorded_revisions=frozenset({A, B}), verdict=verdict)
    d = step(promoted, o, GUARD, T0 + timedelta(seconds=61))
    assert d.status.phase == "RollingBack" and d.status.stage == "shift"
    assert d.status.canary_revision == A and d.status.rejected_revision == B
    assert d.arms == (ArmPlan("stable", B, 4), ArmPlan("canary", A, 1))  # capacity kept while A comes back
    assert [e.reason for e in d.events] == ["GuardRollback"]
    # after the guard the same regression only reports drift
    late = promoted.model_copy(update={"guard_until": at(30)})
    d = step(late, o, GUARD, T0 + timedelta(seconds=61))
    assert d.status.phase == "Promoted" and d.status.quality_drift
    assert [e.reason for e in d.events] == ["QualityDrift"]
    assert any(c.type == "QualityDrift" and c.status for c in d.conditions)
    # without the revision record there is nothing to roll back to: drift only
    d = step(promoted, Observation(B, arm(B, 4), None, verdict=verdict), GUARD, T0 + timedelta(seconds=61))
    assert d.status.phase == "Promoted"


def test_decision_modules_read_no_clock_and_do_no_io() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "operator" / "localattn_operator"
    for name in ("rollout", "rollout_types", "rollout_control", "rollout_transitions", "rollout_validation", "analysis", "weights",
                 "queries", "metrics_provider", "traffic_router", "duration", "paired"):
        source = (root / f"{name}.py").read_text()
        for banned in ("datetime.now", "datetime.utcnow", "time.time", "import time", "import urllib", "import requests",
                       "import socket", "import http", "import kopf", "import kubernetes", "import aiohttp"):
            assert banned not in source, (name, banned)


def test_a_stalled_promotion_warns_once_and_keeps_serving() -> None:
    shifting = progressing(phase="Promoting", stage="shift", stable_replicas=3, canary_replicas=2)
    stuck = obs(B, stable=arm(A, 3), canary=arm(B, 1, 2))  # the second canary pod never becomes ready (no GPU)
    d = step(shifting, stuck, SPEC, T0 + timedelta(seconds=601))
    assert [e.reason for e in d.events] == ["PromotionStalled"] and d.status.phase == "Promoting"
    assert d.arms == (ArmPlan("stable", A, 3), ArmPlan("canary", B, 2))  # nothing removed
    again = step(d.status, stuck, SPEC, T0 + timedelta(seconds=700))
    assert again.events == ()


def test_printer_columns_and_protected_revisions() -> None:
    last = LastAnalysisStatus(phase="Successful", finished_at=at(60),
                              stable=ArmAnalysisStatus(revision=A, p95_latency_seconds=2.0, probe_exact_match=0.9),
                              canary=ArmAnalysisStatus(revision=B, p95_latency_seconds=1.5, probe_exact_match=0.8))
    running = settled(last_analysis=last, achieved_weight=20)
    assert printer_columns(running) == (20, 1.5, 0.8)
    idle = RolloutStatus(stable_revision=A, last_analysis=last)
    assert printer_columns(idle) == (None, 2.0, 0.9)
    assert protected_revisions(RolloutStatus(stable_revision=B, previous_revision=A, draining_revision=C)) == {A, B, C}
    long = last.model_copy(update={"stable": ArmAnalysisStatus(revision=A, p95_latency_seconds=0.23761904761904762,
                                                               probe_exact_match=2 / 3)})
    assert printer_columns(RolloutStatus(stable_revision=A, last_analysis=long)) == (None, 0.238, 0.667)
