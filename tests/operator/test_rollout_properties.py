"""The state machine under arbitrary sequences of observations, verdicts, requests and spec changes (hypothesis).

No sequence raises, the plan never exceeds the surge budget, the status always survives a JSON round trip
(what a restarted operator reads), and the bounded lists stay bounded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localattn_operator.analysis import ArmFigures, GateResult, Verdict, Window
from localattn_operator.models import LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.rollout import ArmObservation, Observation, analysis_due, step
from localattn_operator.rollout_types import STEADY
from localattn_operator.validation import validate_spec
from localattn_operator.weights import resolve_surge

T0 = datetime(2026, 12, 1, tzinfo=UTC)
REVS = ("aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc")


def make_spec(replicas: int, surge: Any, steps: list[dict[str, Any]], gateway: bool, guard: bool) -> LocalAttnDeploymentSpec:
    rollout: dict[str, Any] = {"steps": steps, "maxSurge": surge}
    if gateway:
        rollout["router"] = {"gatewayAPI": {"httpRoute": "r"}}
    if guard:
        rollout["postPromotionGuard"] = "5m"
    return validate_spec({"model": {"uri": "pvc://m/x"}, "replicas": replicas, "rollout": rollout,
                          "probe": {"enabled": guard},
                          "analysis": {"interval": "10s", "thresholds": {"maxExactMatchDrop": 0.05} if guard else {}}})


specs = st.builds(
    make_spec, st.integers(2, 8), st.sampled_from([0, 1, 2, "50%"]),
    st.sampled_from([[], [{"setWeight": 20}], [{"setWeight": 10}, {"pause": {}}, {"setWeight": 60}],
                     [{"pause": {"duration": "20s"}}, {"setWeight": 50}, {"setWeight": 100}]]),
    st.booleans(), st.booleans(),
)
passes = st.lists(st.fixed_dictionaries({
    "revision": st.sampled_from([*REVS, *[REVS[1]] * 8, None]),
    "stable_ready": st.sampled_from([1.0] * 4 + [0.5, 0.0]), "canary_ready": st.sampled_from([1.0] * 4 + [0.5, 0.0]),
    "crash": st.integers(0, 20),
    "verdict": st.sampled_from(["Successful"] * 4 + ["Failed", "Inconclusive", "Error", None]),
    "request": st.sampled_from([None] * 20 + ["pause", "resume", "promote", "abort"]),
    "seconds": st.sampled_from([1, 5, 5, 10, 30, 700]),
}), min_size=1, max_size=60)


def _arm(planned: dict[str, tuple[str, int]], track: str, fraction: float, crash: bool) -> ArmObservation | None:
    """The arm as the last plan left it, with a fraction of its pods ready."""
    if track not in planned:
        return None
    revision, replicas = planned[track]
    ready = int(replicas * fraction)
    return ArmObservation(revision, replicas, ready, ready, crash_looping=crash)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, passes)
def test_any_sequence_keeps_the_invariants(spec: LocalAttnDeploymentSpec, sequence: list[dict[str, Any]]) -> None:
    status: RolloutStatus | None = None
    now = T0
    planned: dict[str, tuple[str, int]] = {}
    budget = spec.replicas + resolve_surge(spec.rollout.max_surge if spec.rollout else "25%", spec.replicas)
    annotations: dict[str, str] = {}
    for i, p in enumerate(sequence):

        if p["request"]:
            annotations[f"localattn.dev/{p['request']}"] = f"r{i}"
        due = analysis_due(status, spec, now) if status else None
        verdict = None
        if due is not None and p["verdict"] is not None:
            w = Window(due, ArmFigures(due.stable_revision), ArmFigures(due.canary_revision or ""))
            errored = p["verdict"] == "Error"  # a provider-error window: Inconclusive, its gates Error
            gates = (GateResult("latency.e2e", "Error", message="provider error"),) if errored else ()
            verdict = Verdict(due, "Inconclusive" if errored else p["verdict"], gates, w)
        revision = REVS[0] if i == 0 else p["revision"]  # A is stable first; mostly B is then rolled out
        valid = revision is not None
        obs = Observation(revision, _arm(planned, "stable", p["stable_ready"], False),
                          _arm(planned, "canary", p["canary_ready"], p["crash"] == 0),
                          recorded_revisions=frozenset(REVS), annotations=dict(annotations), verdict=verdict)
        d = step(status, obs, spec if valid else None, now)
        if valid:
            assert sum(a.replicas for a in d.arms) <= budget
            assert len(d.arms) <= 2 and len({a.track for a in d.arms}) == len(d.arms)
            assert any(a.track == "stable" and a.revision == d.status.stable_revision for a in d.arms)
            assert 0 <= d.weights.canary <= 100 and d.weights.stable + d.weights.canary == 100
            if d.status.phase in STEADY and d.status.draining_revision is None:
                assert d.status.canary_revision is None and [a.track for a in d.arms] == ["stable"]
            if d.status.phase not in ("Promoting", "RollingBack"):
                assert d.status.stage is None
        assert len(d.status.history) <= 20 and len(d.status.measurements) <= 10
        assert d.requeue_after is None or d.requeue_after > 0
        status = RolloutStatus.model_validate(json.loads(json.dumps(d.status.model_dump(mode="json", by_alias=True))))
        assert status == d.status
        planned = {a.track: (a.revision, a.replicas) for a in d.arms}
        now += timedelta(seconds=p["seconds"])
