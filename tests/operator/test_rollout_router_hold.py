"""A rollout holds while the gatewayAPI router fails (pure): `rollout.hold_for_router(previous, decision, error)`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from localattn_operator.duration import format_time
from localattn_operator.models import RolloutStatus
from localattn_operator.rollout import ArmObservation, ArmPlan, Observation, hold_for_router, step
from localattn_operator.rollout_types import POLL_SECONDS
from localattn_operator.validation import validate_spec
from localattn_operator.weights import RouteWeights

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
A, B, C = "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"
SPEC = validate_spec({"model": {"uri": "pvc://models/llm"}, "replicas": 2,
                      "analysis": {"interval": "1m", "minRequests": 1},
                      "rollout": {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}], "maxSurge": 1,
                                  "router": {"gatewayAPI": {"httpRoute": "llm"}}}})
ERROR = "HTTPRoute ns/llm not found (spec.rollout.router.gatewayAPI.httpRoute): ...; traffic was not changed"


def paused(**kw: Any) -> RolloutStatus:
    """At the pause step (weight 25) of a gatewayAPI rollout: one canary pod, stable at full size."""
    base: dict[str, Any] = dict(phase="Paused", stable_revision=A, canary_revision=B, step_index=1,
                                step_started_at=format_time(T0), stable_replicas=2, canary_replicas=1,
                                desired_weight=25)
    return RolloutStatus(**{**base, **kw})


def observe(spec_revision: str, **kw: Any) -> Observation:
    return Observation(spec_revision, ArmObservation(A, 2, 2, 2), ArmObservation(B, 1, 1, 1), router_weight=25,
                       recorded_revisions=frozenset({A, B, C}), **kw)


def test_a_resume_while_the_route_is_missing_changes_nothing_and_retries() -> None:
    before = paused()
    now = T0 + timedelta(minutes=5)
    moved = step(before, observe(B, annotations={"localattn.dev/resume": format_time(now)}), SPEC, now)
    assert moved.status.step_index == 2 and moved.weights.canary > 25  # what it would do
    held = hold_for_router(before, moved, ERROR)
    assert held.status == before  # no step, no acknowledged request (it is acted on once the route works)
    assert held.weights == RouteWeights(75, 25)
    assert held.arms == (ArmPlan("stable", A, 2), ArmPlan("canary", B, 1))
    assert held.events == () and held.conditions == ()
    assert held.requeue_after == POLL_SECONDS
    assert hold_for_router(before, moved, None) is moved  # the route back: the same pass moves on


def test_neither_a_new_rollout_nor_a_rollback_starts_while_the_route_fails() -> None:
    steady = RolloutStatus(phase="Promoted", stable_revision=A, stable_replicas=2)
    started = step(steady, Observation(C, ArmObservation(A, 2, 2, 2), recorded_revisions=frozenset({A, C})),
                   SPEC, T0)
    assert started.status.phase == "Progressing"  # a spec change would start a canary
    assert hold_for_router(steady, started, ERROR).status == steady
    aborting = step(paused(), observe(B, annotations={"localattn.dev/abort": format_time(T0)}), SPEC, T0)
    assert aborting.status.phase == "Aborted"
    assert hold_for_router(paused(), aborting, ERROR).arms == (ArmPlan("stable", A, 2), ArmPlan("canary", B, 1))


def test_a_lad_with_no_rollout_is_not_held_by_its_route() -> None:
    steady = RolloutStatus(phase="Promoted", stable_revision=A, stable_replicas=2)
    spec = SPEC.model_copy(update={"replicas": 3})
    scaled = step(steady, Observation(A, ArmObservation(A, 2, 2, 2), recorded_revisions=frozenset({A})), spec, T0)
    assert scaled.arms == (ArmPlan("stable", A, 3),)
    assert hold_for_router(steady, scaled, ERROR) is scaled
