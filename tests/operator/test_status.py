"""The pure status step: one row per transition."""

from datetime import UTC, datetime

import pytest

from localattn_operator.models import LocalAttnDeploymentStatus
from localattn_operator.status import DeploymentState, Observation, PendingPod, compute

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
