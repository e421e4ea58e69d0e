"""Whole rollouts, pass by pass, against a simulated cluster and recorded metric series (pure).

Each pass: the executor's side (observe the arms, measure what `analysis_due` asks for) -> `rollout.step` ->
apply the plan. The status goes through JSON between passes, as it does through the apiserver, so every pass
is also a restarted operator's first one. Pods become ready a few passes after they are created.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localattn_operator.analysis import (
    AnalysisRequest,
    ArmFigures,
    Figures,
    Window,
    arm_from_status,
    assess,
    assess_guard,
)
from localattn_operator.models import LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.rollout import ArmObservation, Decision, Observation, analysis_due, step
from localattn_operator.validation import validate_spec

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
TICK = 5
READY_AFTER = 3  # passes
A, B, C = "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"
GOOD = Figures(requests=200, p95_e2e=2.0, p95_ttft=0.4, p95_itl=0.05, error_rate=0.0,
               tokens_per_gpu_second=40.0, probe_perplexity=12.0, probe_exact_match=0.9)


@dataclass
class Arm:
    revision: str | None = None
    ages: list[int] = field(default_factory=list)  # one per pod, passes since created

    @property
    def ready(self) -> int:
        return sum(a >= READY_AFTER for a in self.ages)

    def apply(self, revision: str, replicas: int) -> None:
        if revision != self.revision:
            self.revision, self.ages = revision, []  # a new template replaces every pod
        self.ages.sort(reverse=True)  # not-ready (youngest) pods are deleted first
        self.ages = self.ages[:replicas] + [0] * max(0, replicas - len(self.ages))


@dataclass
class Cluster:
    stable: Arm = field(default_factory=Arm)
    canary: Arm = field(default_factory=Arm)

    def observe(self, track: str) -> ArmObservation | None:
        a = self.stable if track == "stable" else self.canary
        if a.revision is None:
            return None
        return ArmObservation(a.revision, len(a.ages), a.ready, a.ready)

    def apply(self, d: Decision) -> None:
        listed = {p.track for p in d.arms}
        for plan in d.arms:
            (self.stable if plan.track == "stable" else self.canary).apply(plan.revision, plan.replicas)
        if "canary" not in listed:
            self.canary = Arm()

    def tick(self) -> None:
        for a in (self.stable, self.canary):
            a.ages = [x + 1 for x in a.ages]


Figs = Callable[[str], Figures]


@dataclass
class Run:
    spec: LocalAttnDeploymentSpec
    figures: Figs = lambda rev: GOOD
    provider_down: Callable[[datetime], bool] = lambda now: False
    cluster: Cluster = field(default_factory=Cluster)
    status: RolloutStatus | None = None
    now: datetime = T0
    log: list[tuple[str, int, int, int]] = field(default_factory=list)  # phase, ready, pods, desired weight
    events: list[str] = field(default_factory=list)
    revision: str = A

    def measure(self, due: AnalysisRequest) -> Any:
        if self.provider_down(self.now):
            err = {f: "connection refused" for f in ("requests", "p95_e2e", "p95_ttft", "p95_itl", "error_rate",
                                                      "probe_perplexity", "probe_exact_match")}
            arm = lambda rev: ArmFigures(rev, Figures(), {}, err)  # noqa: E731
            return assess(Window(due, arm(due.stable_revision), arm(due.canary_revision or "")), self.spec.analysis,
                          probe=self.spec.probe.enabled, paired=False)
        if due.kind == "guard":
            assert self.status is not None and self.status.baseline is not None
            window = Window(due, arm_from_status(self.status.baseline), ArmFigures(due.stable_revision,
                                                                                   self.figures(due.stable_revision)))
            return assess_guard(window, self.spec.analysis)
        window = Window(due, ArmFigures(due.stable_revision, self.figures(due.stable_revision)),
                        ArmFigures(due.canary_revision or "", self.figures(due.canary_revision or "")))
        return assess(window, self.spec.analysis, probe=self.spec.probe.enabled, paired=False)

    def passes(self, n: int, until: str | None = None) -> None:
        for _ in range(n):
            due = analysis_due(self.status, self.spec, self.now) if self.status else None
            obs = Observation(self.revision, self.cluster.observe("stable"), self.cluster.observe("canary"),
                              recorded_revisions=frozenset({A, B, C}), verdict=self.measure(due) if due else None)
            d = step(self.status, obs, self.spec, self.now)
            self.cluster.apply(d)
            self.events += [e.reason for e in d.events]
            raw = json.loads(json.dumps(d.status.model_dump(mode="json", by_alias=True)))
            self.status = RolloutStatus.model_validate(raw)  # what the next (possibly restarted) operator reads
            c = self.cluster
            self.log.append((self.status.phase, c.stable.ready + c.canary.ready,
                             len(c.stable.ages) + len(c.canary.ages), self.status.desired_weight))
            self.cluster.tick()
            self.now += timedelta(seconds=TICK)
            if until is not None and self.status.phase == until:
                return

    def start(self) -> None:
        self.passes(READY_AFTER + 2)
        assert self.status is not None and self.status.phase == "Idle" and self.cluster.stable.ready == 4
        self.log.clear()
        self.revision = B


def spec(**rollout: Any) -> LocalAttnDeploymentSpec:
    raw: dict[str, Any] = {"model": {"uri": "pvc://models/llm"}, "replicas": 4, "probe": {"enabled": True},
                           "analysis": {"interval": "30s", "minRequests": 10,
                                        "thresholds": {"maxPerplexityRatio": 1.05, "maxExactMatchDrop": 0.05}},
                           "rollout": {"steps": [{"setWeight": 10}, {"setWeight": 25}, {"setWeight": 50}], **rollout}}
    return validate_spec(raw)


@pytest.mark.parametrize("surge", [1, 0, "100%"])
def test_a_good_canary_is_promoted_through_every_step(surge: int | str) -> None:
    run = Run(spec(maxSurge=surge))
    run.start()
    run.passes(400, until="Promoted")
    assert run.status is not None and run.status.phase == "Promoted", run.status.message
    assert run.status.stable_revision == B and run.status.previous_revision == A
    assert run.cluster.stable.revision == B and run.cluster.canary.revision is None
    weights = [w for phase, _, _, w in run.log if phase == "Progressing"]
    assert sorted(set(weights)) == [10, 25, 50]  # every step was visited, in order
    assert weights == sorted(weights)
    floor = 4 if surge != 0 else 3
    assert min(ready for _, ready, _, _ in run.log) >= floor  # ready serving pods never below spec.replicas
    if surge == 0:
        assert max(pods for _, _, pods, _ in run.log) <= 4  # maxSurge 0: the GPU count never rises
    assert [e for e in run.events if e.startswith("Analysis")] == ["AnalysisSuccessful"] * 3
    assert run.status.counters.successful == 3 and len(run.status.measurements) == 3


def test_a_quality_regression_is_rolled_back_by_the_quality_gate() -> None:
    bad = Figures(**{**GOOD.__dict__, "probe_perplexity": 19.0, "probe_exact_match": 0.4})
    run = Run(spec(maxSurge=1), figures=lambda rev: bad if rev == B else GOOD)
    run.start()
    run.passes(200, until="RolledBack")
    assert run.status is not None and run.status.phase == "RolledBack"
    assert run.status.rejected_revision == B and run.cluster.canary.revision is None
    assert run.status.last_analysis is not None
    failed = {g.gate for g in run.status.last_analysis.gates if g.phase == "Failed"}
    assert failed == {"quality.perplexity", "quality.exactMatch"}
    assert "RolledBack" in run.events and min(r for _, r, _, _ in run.log) >= 4
    run.passes(20)  # the spec still says B: it stays rolled back
    assert run.status.phase == "RolledBack" and run.cluster.canary.revision is None


def test_a_latency_regression_is_rolled_back() -> None:
    slow = Figures(**{**GOOD.__dict__, "p95_e2e": 4.0})
    run = Run(spec(maxSurge=1), figures=lambda rev: slow if rev == B else GOOD)
    run.start()
    run.passes(200, until="RolledBack")
    assert run.status is not None and run.status.phase == "RolledBack"
    assert run.status.measurements[-1].message.startswith("latency.e2e: p95 regressed more than 20%")


def test_provider_down_holds_then_rolls_back_per_the_limits() -> None:
    run = Run(spec(maxSurge=1), provider_down=lambda now: True)
    run.start()
    run.passes(300, until="RolledBack")
    assert run.status is not None and run.status.phase == "RolledBack"
    c = run.status.counters  # 4 held for free (consecutiveErrorLimit), then 4 missing data (inconclusiveLimit 3)
    assert (c.errors, c.consecutive_errors, c.inconclusive, c.failed) == (8, 8, 4, 0)  # never a failure
    assert {m.phase for m in run.status.measurements} == {"Inconclusive"}
    assert run.events.count("AnalysisInconclusive") == 7  # the holds; then the rollback, for that reason:
    assert [h.reason for h in run.status.history if h.to_phase == "RollingBack"] == ["AnalysisInconclusive"]
    assert all(w == 10 for phase, _, _, w in run.log if phase == "Progressing")  # held at the first step


def test_a_provider_outage_shorter_than_the_limits_only_delays() -> None:
    outage_end = T0 + timedelta(minutes=4, seconds=30)  # 7 windows of 30 s: 4 free, then the 3 inconclusive ones allowed
    run = Run(spec(maxSurge=1), provider_down=lambda now: now < outage_end)
    run.start()
    run.passes(600, until="Promoted")
    assert run.status is not None and run.status.phase == "Promoted"
    c = run.status.counters
    assert (c.errors, c.inconclusive, c.failed, c.consecutive_errors) == (7, 3, 0, 0), c


def test_a_newer_spec_mid_rollout_supersedes_the_canary() -> None:
    run = Run(spec(maxSurge=1))
    run.start()
    run.passes(14)
    assert run.status is not None and run.status.phase == "Progressing" and run.status.step_index == 1
    run.revision = C
    run.passes(1)
    assert run.status.canary_revision == C and run.status.step_index == 0
    run.passes(400, until="Promoted")
    assert run.status.phase == "Promoted" and run.status.stable_revision == C
    assert min(r for _, r, _, _ in run.log) >= 4


def test_reverting_the_spec_mid_rollout_leaves_stable_untouched() -> None:
    run = Run(spec(maxSurge=1))
    run.start()
    run.passes(14)
    assert run.status is not None and run.status.phase == "Progressing"
    stable_pods = sorted(run.cluster.stable.ages)
    run.revision = A
    run.passes(1)
    assert run.status.phase == "Idle" and run.cluster.canary.revision is None
    assert run.cluster.stable.revision == A and sorted(a - 1 for a in run.cluster.stable.ages) == stable_pods


def test_guard_rolls_back_a_regression_after_promotion() -> None:
    degraded_after = T0 + timedelta(minutes=12)  # the new revision's quality decays after promotion

    def figures(rev: str) -> Figures:
        if rev == B and run.now > degraded_after:
            return Figures(**{**GOOD.__dict__, "probe_exact_match": 0.5})
        return GOOD

    run = Run(spec(maxSurge=1, postPromotionGuard="30m"), figures=figures)
    run.start()
    run.passes(400, until="Promoted")
    assert run.status is not None and run.status.phase == "Promoted" and run.now < degraded_after
    run.passes(600, until="RolledBack")
    assert run.status.phase == "RolledBack" and run.status.stable_revision == A
    assert run.cluster.stable.revision == A and "GuardRollback" in run.events
    assert min(r for phase, r, _, _ in run.log if phase in ("Promoted", "RollingBack")) >= 4


def test_rollback_with_maxsurge_zero_keeps_capacity_and_the_gpu_count() -> None:
    """Stable was shrunk to half at 50%: the failed canary's ready pods serve until stable is back."""
    def figures(rev: str) -> Figures:
        late = run.status is not None and run.status.desired_weight == 50
        return Figures(**{**GOOD.__dict__, "p95_e2e": 9.0}) if rev == B and late else GOOD

    run = Run(spec(maxSurge=0), figures=figures)
    run.start()
    run.passes(400, until="RolledBack")
    assert run.status is not None and run.status.phase == "RolledBack", run.status.message
    assert run.status.draining_revision is None and run.cluster.canary.revision is None
    assert run.cluster.stable.ready == 4
    assert min(ready for _, ready, _, _ in run.log) >= 3  # one pod at a time (its GPU is needed)
    assert max(pods for _, _, pods, _ in run.log) <= 4  # the GPU count never rises
    phases = [phase for phase, _, _, _ in run.log]
    assert phases.count("RollingBack") > 1  # stable regrew while the canary drained
