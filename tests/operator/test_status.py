"""The pure status step: one row per transition."""

from datetime import UTC, datetime, timedelta

import pytest

from localattn_operator.models import Condition, LocalAttnDeploymentStatus
from localattn_operator.status import (
    DERIVED_FIELDS,
    DeploymentState,
    FailingPod,
    Observation,
    PendingPod,
    compute,
    parse_previous,
    status_patch,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def dep(desired: int = 2, ready: int = 2, updated: int | None = None, replicas: int | None = None) -> DeploymentState:
    return DeploymentState(
        desired=desired, replicas=desired if replicas is None else replicas, ready=ready,
        updated=desired if updated is None else updated, up_to_date=True,
    )


def ready_status(revision: str = "r1", desired: int = 2) -> LocalAttnDeploymentStatus:
    status, _ = compute(Observation(generation=1, previous=LocalAttnDeploymentStatus(), now=NOW, revision=revision,
                                    desired_replicas=desired, deployment=dep(desired, desired)))
    return status


def conditions(status: LocalAttnDeploymentStatus) -> dict[str, str]:
    return {c.type: c.status for c in status.conditions}


@pytest.mark.parametrize(
    ("name", "obs_kwargs", "phase", "reasons"),
    [
        ("first pass, no deployment yet", dict(revision="r1", desired_replicas=2), "Pending", ["Created"]),
        ("all ready", dict(revision="r1", desired_replicas=2, deployment=dep(2, 2)), "Ready", ["Created", "Ready"]),
        ("rolling", dict(revision="r1", desired_replicas=2, deployment=dep(2, 1, updated=1)), "Progressing", ["Created"]),
        ("pods pending", dict(revision="r1", desired_replicas=2, deployment=dep(2, 0),
                               pending=[PendingPod("p", "Unschedulable", "0/2 nodes: Insufficient nvidia.com/gpu")]),
         "Pending", ["Created", "PodsPending"]),
        ("invalid on first pass", dict(problems=["spec.model.uri: bad"]), "InvalidSpec", ["InvalidSpec"]),
    ],
)
def test_from_scratch(name: str, obs_kwargs: dict, phase: str, reasons: list[str]) -> None:
    status, events = compute(Observation(generation=1, previous=LocalAttnDeploymentStatus(), now=NOW, **obs_kwargs))
    assert status.phase == phase, name
    assert [e.reason for e in events] == reasons, name
    assert status.observed_generation == 1


def test_steady_state_is_quiet_and_stable() -> None:
    previous = ready_status()
    status, events = compute(Observation(generation=1, previous=previous, now=NOW.replace(hour=5), revision="r1",
                                         desired_replicas=2, deployment=dep(), applied={"Deployment/x": "unchanged"}))
    assert events == []
    assert status == previous  # transition times kept: no status write needed


def test_new_revision_rolls_and_keeps_ready_transition_time() -> None:
    previous = ready_status("r1")
    status, events = compute(Observation(generation=2, previous=previous, now=NOW.replace(hour=1), revision="r2",
                                         desired_replicas=2, deployment=dep(2, 2, updated=1, replicas=3)))
    assert [e.reason for e in events] == ["RollingUpdate"]
    assert status.current_revision == "r2" and status.phase == "Progressing"
    assert conditions(status)["Progressing"] == "True"


def test_invalid_spec_keeps_revision_and_counts() -> None:
    previous = ready_status("r1")
    status, events = compute(Observation(generation=2, previous=previous, now=NOW, problems=["spec.x: bad"],
                                         deployment=dep()))
    assert status.phase == "InvalidSpec" and status.current_revision == "r1"
    assert status.ready_replicas == 2 and conditions(status)["InvalidSpec"] == "True"
    assert [e.type for e in events] == ["Warning"]
    again, events = compute(Observation(generation=2, previous=status, now=NOW, problems=["spec.x: bad"], deployment=dep()))
    assert events == [] and again == status
    fixed, events = compute(Observation(generation=3, previous=status, now=NOW, revision="r1", desired_replicas=2,
                                        deployment=dep()))
    assert fixed.phase == "Ready" and "SpecValid" in [e.reason for e in events]


def test_drift_is_reported_only_without_spec_change() -> None:
    previous = ready_status()
    _, events = compute(Observation(generation=1, previous=previous, now=NOW, revision="r1", desired_replicas=2,
                                    deployment=dep(), applied={"Deployment/x": "created"}))
    assert [e.reason for e in events] == ["DriftCorrected"]
    assert "missing" in events[0].message


def test_scaling_emits_scaled() -> None:
    previous = ready_status(desired=2)
    status, events = compute(Observation(generation=2, previous=previous, now=NOW, revision="r1", desired_replicas=4,
                                         deployment=dep(4, 2, updated=4, replicas=2)))
    assert "Scaled" in [e.reason for e in events]
    assert status.desired_replicas == 4 and status.ready == "2/4" and status.phase == "Progressing"


def crash(name: str = "p-1", reason: str = "CrashLoopBackOff") -> FailingPod:
    return FailingPod(name=name, container="vllm", reason=reason, restarts=3, exit_code=1,
                      last_message="ValueError: no model at /models/x")


def degraded(status: LocalAttnDeploymentStatus) -> Condition:
    return next(c for c in status.conditions if c.type == "Degraded")


def test_crash_looping_pod_is_degraded_with_pod_and_exit_and_warns_once() -> None:
    previous = ready_status()
    obs = dict(generation=2, now=NOW, revision="r2", desired_replicas=2, deployment=dep(2, 1, updated=1, replicas=3),
               failing=[crash()])
    status, events = compute(Observation(previous=previous, **obs))  # type: ignore[arg-type]
    assert status.phase == "Degraded"
    cond = degraded(status)
    assert cond.status == "True" and cond.reason == "CrashLoopBackOff"
    assert "p-1" in (cond.message or "") and "exit code 1" in (cond.message or "")
    assert "no model at /models/x" in (cond.message or "") and "3 restart(s)" in (cond.message or "")
    assert [(e.type, e.reason) for e in events if e.type == "Warning"] == [("Warning", "CrashLoopBackOff")]
    again, events = compute(Observation(previous=status, **obs))  # type: ignore[arg-type]
    assert not [e for e in events if e.type == "Warning"] and again == status
    recovered, events = compute(Observation(generation=2, previous=again, now=NOW, revision="r2", desired_replicas=2,
                                            deployment=dep(2, 2)))
    assert recovered.phase == "Ready" and degraded(recovered).status == "False"
    assert "Recovered" in [e.reason for e in events]


def test_progress_deadline_exceeded_is_degraded_not_progressing() -> None:
    stuck = DeploymentState(desired=2, replicas=2, ready=0, updated=2, up_to_date=True, progress_deadline_exceeded=True,
                            progress_message='ReplicaSet "x-1" has timed out progressing.')
    status, events = compute(Observation(generation=1, previous=ready_status(), now=NOW, revision="r1",
                                         desired_replicas=2, deployment=stuck))
    assert status.phase == "Degraded"
    assert degraded(status).reason == "ProgressDeadlineExceeded" and "timed out" in (degraded(status).message or "")
    progressing = next(c for c in status.conditions if c.type == "Progressing")
    assert progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded"
    assert ("Warning", "ProgressDeadlineExceeded") in [(e.type, e.reason) for e in events]


@pytest.mark.parametrize(("age_seconds", "warned"), [(5, False), (59, False), (60, True), (600, True)])
def test_pending_pods_warn_only_past_the_grace_period(age_seconds: int, warned: bool) -> None:
    pending = [PendingPod("p", "ContainerCreating", "starting", since=NOW - timedelta(seconds=age_seconds))]
    status, events = compute(Observation(generation=1, previous=LocalAttnDeploymentStatus(), now=NOW, revision="r1",
                                         desired_replicas=1, deployment=dep(1, 0), pending=pending,
                                         pending_grace_seconds=60))
    assert ("PodsPending" in [e.reason for e in events]) is warned
    assert all(e.type == "Normal" for e in events) is not warned
    assert degraded(status).status == ("True" if warned else "False")
    assert status.phase == ("Pending" if warned else "Progressing")
    assert status.pending_replicas == 1  # counted either way


def test_rejected_apply_is_reported_like_an_invalid_spec_once() -> None:
    previous = ready_status("r1")
    message = 'Deployment/x rejected by the apiserver: spec.template.spec.containers[0].env[3].name: Duplicate value: "HOME"'
    obs = dict(generation=2, now=NOW, revision="r2", desired_replicas=2, deployment=dep(), rejected=[message])
    status, events = compute(Observation(previous=previous, **obs))  # type: ignore[arg-type]
    cond = next(c for c in status.conditions if c.type == "InvalidSpec")
    assert cond.status == "True" and cond.reason == "ApplyRejected" and "Duplicate value" in (cond.message or "")
    assert status.phase == "InvalidSpec" and status.current_revision == "r1"  # the running version is unchanged
    assert [(e.type, e.reason) for e in events] == [("Warning", "ApplyRejected")]
    assert "Duplicate value" in events[0].message
    _, events = compute(Observation(previous=status, **obs))  # type: ignore[arg-type]
    assert events == []  # a resync of the same refusal stays quiet


def test_unreadable_status_keeps_what_parses() -> None:
    raw = status_patch(ready_status("r1"))
    raw["currentRevision"] = {"not": "a string"}
    raw["phase"] = "Bogus"
    raw["fieldOfANewerOperator"] = {"step": 3}  # unknown here: ignored, and never overwritten
    raw["conditions"].append({"type": "Nonsense"})
    previous, unreadable = parse_previous(raw)
    assert unreadable == ["conditions", "currentRevision", "phase"]
    assert previous.desired_replicas == 2 and previous.selector is None and previous.current_revision is None
    assert len(previous.conditions) == 4
    _, events = compute(Observation(generation=1, previous=previous, now=NOW, revision="r1", desired_replicas=2,
                                    deployment=dep(), unreadable=unreadable))
    assert "StatusUnreadable" in [e.reason for e in events]
    assert "currentRevision" not in DERIVED_FIELDS and "phase" in DERIVED_FIELDS
