"""The reconcile pass's order and safety, over a stand-in for the Cluster verbs (no apiserver needed here;
tests/operator/test_e2e_operator.py runs the same pass against a real one)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from localattn_operator.k8s import Cluster, Rejected
from localattn_operator.reconciler import Reconciler
from localattn_operator.status import ApplyResult, Event

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "deployment.yaml").read_text())


class Crash(Exception):
    """The operator dying at this point."""


class FakeCluster:
    """The Cluster verbs over an in-memory store; every pod an arm asks for is Ready at once."""

    def __init__(self, status: dict[str, Any] | None = None):
        self.lad = {**copy.deepcopy(EXAMPLE), "metadata": {"name": "tiny-llama", "namespace": "ns", "uid": "u",
                                                             "generation": 1, "resourceVersion": "7"}}
        if status is not None:
            self.lad["status"] = status
        self.log: list[tuple[str, Any]] = []
        self.crash_on_status = False
        self.reject: str | None = None
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def get_lad(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.lad)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    def plan_apply(self, manifest: dict[str, Any]) -> ApplyResult:
        if manifest["kind"] == self.reject:
            raise Rejected(f"{manifest['kind']}/{manifest['metadata']['name']}", "spec.x: Invalid value")
        self.log.append(("plan", manifest["kind"]))
        live = self.objects.get((manifest["kind"], manifest["metadata"]["name"]))
        return "created" if live is None else "unchanged" if live == manifest else "updated"

    def apply(self, manifest: dict[str, Any]) -> None:
        self.log.append(("apply", manifest["kind"]))
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = copy.deepcopy(manifest)

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.log.append(("delete", kind))
        self.objects.pop((kind, name), None)

    def list_objects(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        if kind == "Pod":
            return self.pods(namespace, selector)
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind]

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return [{"metadata": {"name": f"{name}-{i}", "labels": dep["spec"]["template"]["metadata"]["labels"]},
                 "spec": {}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
                for (kind, name), dep in self.objects.items() if kind == "Deployment"
                for i in range(dep["spec"]["replicas"])]

    def emit_event(self, owner: dict[str, Any], event: Event) -> None:
        self.log.append(("event", event.reason))

    def scale_lad(self, namespace: str, name: str, replicas: int) -> None:
        self.log.append(("scale", replicas))
        self.lad["spec"]["replicas"] = replicas

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        if self.crash_on_status:
            raise Crash
        self.log.append(("status", status))
        self.lad["status"] = {**self.lad.get("status", {}), **status}


def reconcile(cluster: FakeCluster) -> None:
    Reconciler(cluster).reconcile_now("ns", "tiny-llama")  # type: ignore[arg-type]


def test_events_are_posted_before_the_status_that_records_them_so_a_crash_repeats_not_loses_them() -> None:
    cluster = FakeCluster()
    cluster.crash_on_status = True
    with pytest.raises(Crash):
        reconcile(cluster)
    first = [what for kind, what in cluster.log if kind == "event"]
    assert first == ["Created", "Ready"]
    cluster.crash_on_status = False
    cluster.log.clear()
    reconcile(cluster)  # the next operator: the transition was not recorded, so it is decided (and posted) again
    kinds = [kind for kind, _ in cluster.log]
    assert [what for kind, what in cluster.log if kind == "event"] == first
    assert kinds.index("status") > max(i for i, k in enumerate(kinds) if k == "event")
    cluster.log.clear()
    reconcile(cluster)  # recorded now: quiet
    assert not [k for k, _ in cluster.log if k in ("event", "status")]


def test_a_rejected_child_applies_nothing_and_reports() -> None:
    cluster = FakeCluster()
    cluster.reject = "Deployment"
    reconcile(cluster)  # no exception: kopf does not retry it in a loop; the resync will
    assert not [k for k, _ in cluster.log if k == "apply"]  # not even the ConfigMap planned before it
    assert ("event", "ApplyRejected") in cluster.log
    status = cluster.lad["status"]
    invalid = next(c for c in status["conditions"] if c["type"] == "InvalidSpec")
    assert invalid["reason"] == "ApplyRejected" and "Deployment/tiny-llama-canary" in invalid["message"]
    assert "spec.x: Invalid value" in invalid["message"]


def test_unreadable_rollout_state_is_left_alone() -> None:
    cluster = FakeCluster(status={"currentRevision": ["not", "a", "string"], "desiredReplicas": 2, "phase": "Bogus"})
    reconcile(cluster)
    patch = next(what for kind, what in cluster.log if kind == "status")
    assert "currentRevision" not in patch  # left as it is in the cluster, not replaced by a default
    assert patch["phase"] == "Ready" and patch["desiredReplicas"] == 2  # derived and readable fields are written
    assert ("event", "StatusUnreadable") in cluster.log


def test_event_names_make_a_repeated_post_a_no_op() -> None:
    """Same owner resourceVersion and event: same name (AlreadyExists); another resourceVersion: a new event."""
    posted: list[str] = []

    def call(method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        name = body["metadata"]["name"]
        if name in posted:
            raise ApiException(status=409, reason="AlreadyExists")
        posted.append(name)
        return body

    cluster = Cluster(ApiClient())
    cluster._call = call  # type: ignore[method-assign]
    owner = {"metadata": {"name": "lad", "namespace": "ns", "uid": "u", "resourceVersion": "7"}}
    event = Event("Normal", "Ready", "2/2 replica(s) ready")
    cluster.emit_event(owner, event)
    cluster.emit_event(owner, event)  # no error, no second event
    assert len(posted) == 1 and posted[0].startswith("lad.")
    cluster.emit_event({"metadata": {**owner["metadata"], "resourceVersion": "8"}}, event)
    assert len(posted) == 2


def _arms(cluster: FakeCluster) -> dict[str, tuple[str, int]]:
    return {name: (dep["spec"]["template"]["metadata"]["labels"]["localattn.dev/revision"], dep["spec"]["replicas"])
            for (kind, name), dep in cluster.objects.items() if kind == "Deployment"}


def test_with_the_spec_invalid_a_deleted_stable_arm_is_restored_from_its_record() -> None:
    cluster = FakeCluster()
    reconcile(cluster)
    running = cluster.lad["status"]["currentRevision"]
    cluster.lad["spec"]["localAttention"]["windowSize"] = 10**6  # invalid: beyond maxModelLen
    cluster.objects.pop(("Deployment", "tiny-llama-stable"))
    reconcile(cluster)
    assert _arms(cluster) == {"tiny-llama-stable": (running, 2)}
    status = cluster.lad["status"]
    assert status["phase"] == "InvalidSpec" and status["currentRevision"] == running and status["readyReplicas"] == 2


def test_the_arms_progress_deadline_follows_the_spec_and_an_invalid_spec_leaves_it_alone() -> None:
    """The deployment controller's ProgressDeadlineExceeded (reported as Degraded) fires after the LAD's
    `spec.rollout.progressDeadlineSeconds`, not a fixed 10 minutes; an invalid spec changes nothing live."""
    cluster = FakeCluster()
    cluster.lad["spec"].setdefault("rollout", {})["progressDeadlineSeconds"] = 45
    reconcile(cluster)
    assert cluster.objects[("Deployment", "tiny-llama-stable")]["spec"]["progressDeadlineSeconds"] == 45
    cluster.lad["spec"]["localAttention"]["windowSize"] = 10**6  # invalid: beyond maxModelLen
    cluster.lad["spec"]["rollout"]["progressDeadlineSeconds"] = 90
    reconcile(cluster)
    assert cluster.objects[("Deployment", "tiny-llama-stable")]["spec"]["progressDeadlineSeconds"] == 45


def _tamper_record(cluster: FakeCluster) -> str:
    """Edit the (only) revision record by hand: its content no longer hashes to its revision."""
    ((key, record),) = [(k, o) for k, o in cluster.objects.items() if k[0] == "ControllerRevision"]
    record["data"]["runtimeConfig"] = {**record["data"]["runtimeConfig"], "config.json": "{}"}
    return key[1]


def test_a_hand_edited_record_of_the_specs_revision_is_rebuilt_keeping_its_number() -> None:
    cluster = FakeCluster()
    reconcile(cluster)
    name = _tamper_record(cluster)
    number = cluster.objects[("ControllerRevision", name)]["revision"]
    reconcile(cluster)
    from localattn_operator.revision import parse_record

    repaired = parse_record(cluster.objects[("ControllerRevision", name)])
    assert repaired is not None and repaired.definition is not None and repaired.number == number
    assert ("delete", "ControllerRevision") in cluster.log
    assert ("event", "RevisionRecordUnusable") not in cluster.log


def test_an_arm_whose_record_is_unusable_is_reported_not_guessed() -> None:
    """With the spec invalid, nothing can rebuild the stable record: the deleted arm stays deleted (rendering
    something else would be worse) and a Warning event says why."""
    cluster = FakeCluster()
    reconcile(cluster)
    _tamper_record(cluster)
    cluster.lad["spec"]["localAttention"]["windowSize"] = 10**6  # invalid: beyond maxModelLen
    cluster.objects.pop(("Deployment", "tiny-llama-stable"))
    reconcile(cluster)
    assert "tiny-llama-stable" not in _arms(cluster)
    assert ("event", "RevisionRecordUnusable") in cluster.log


def test_a_spec_change_runs_a_canary_arm_and_promotes_it_keeping_capacity() -> None:
    cluster = FakeCluster()
    cluster.lad["spec"]["rollout"] = {"steps": []}
    reconcile(cluster)
    first = cluster.lad["status"]["currentRevision"]
    cluster.lad["spec"]["localAttention"]["windowSize"] = 256
    cluster.lad["metadata"]["generation"] = 2
    seen = []
    for _ in range(12):
        reconcile(cluster)
        arms = _arms(cluster)
        seen.append(arms)
        assert sum(replicas for _rev, replicas in arms.values()) >= 2  # never below spec.replicas
        if cluster.lad["status"]["rollout"]["phase"] == "Promoted":
            break
    status = cluster.lad["status"]
    second = status["rollout"]["stableRevision"]
    assert status["rollout"]["phase"] == "Promoted" and second != first and status["currentRevision"] == second
    assert any("tiny-llama-canary" in arms for arms in seen)  # the new revision ran as a canary first
    assert _arms(cluster) == {"tiny-llama-stable": (second, 2)}
    records = {name for kind, name in cluster.objects if kind == "ControllerRevision"}
    assert records == {f"tiny-llama-{first}", f"tiny-llama-{second}"}  # the previous one kept (rollback target)
    assert {name for kind, name in cluster.objects if kind == "ConfigMap"} == {
        f"tiny-llama-runtime-{first}", f"tiny-llama-runtime-{second}"}
    assert status["phase"] == "Ready"


def test_of_several_requeue_requests_the_earliest_wins_and_one_pass_runs() -> None:
    import asyncio

    from localattn_operator.reconciler import PassResult

    passes: list[float] = []

    class Counting(Reconciler):
        def reconcile_now(self, namespace: str, name: str) -> PassResult:
            passes.append(time.monotonic())
            return PassResult()

    async def run() -> float:
        reconciler = Counting(FakeCluster(), coalesce_seconds=0.05)  # type: ignore[arg-type]
        start = time.monotonic()
        reconciler.schedule("ns", "a", delay=5.0)
        reconciler.schedule("ns", "a", delay=0.2)   # earlier: replaces the 5 s request
        reconciler.schedule("ns", "a", delay=3.0)   # later than the pending one: ignored
        await asyncio.sleep(0.6)
        return start

    start = asyncio.run(run())
    assert len(passes) == 1 and 0.15 <= passes[0] - start < 0.5


def _measured(reconciler: Reconciler, waiting_per_pod: float, pods: int) -> None:
    """A load measurement as the measuring thread leaves it for the next pass."""
    from localattn_operator.autoscaling_signals import ReplicaSample, Samples

    sample = ReplicaSample(waiting=waiting_per_pod, running=2, kv_usage=0.1)
    reconciler._loads[("ns", "tiny-llama")] = (time.monotonic(), Samples((sample,) * pods))


def test_autoscaling_writes_the_status_then_the_scale_and_reverts_a_hand_scale() -> None:
    cluster = FakeCluster()
    cluster.lad["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4, "targets": {"waitingRequestsPerReplica": 2}}
    reconciler = Reconciler(cluster)  # type: ignore[arg-type]
    result = reconciler.reconcile_now("ns", "tiny-llama")  # nothing measured yet: holds at spec.replicas
    assert result.load is not None and result.load.ready_by_revision == {cluster.lad["status"]["currentRevision"]: 2}
    assert cluster.lad["status"]["autoscaling"]["desiredReplicas"] == 2 and not [k for k, _ in cluster.log if k == "scale"]
    cluster.log.clear()
    _measured(reconciler, 6, 2)  # 12 waiting over 2 pods, target 2 per replica: 6, clamped to 4
    reconciler.reconcile_now("ns", "tiny-llama")
    kinds = [k for k, _ in cluster.log]
    assert kinds.index("event") < kinds.index("status") < kinds.index("scale")  # event, record, then the write
    assert ("event", "ScaledUp") in cluster.log and ("scale", 4) in cluster.log
    status = cluster.lad["status"]["autoscaling"]
    assert status["desiredReplicas"] == 4 and status["lastDecision"]["signal"] == "waitingRequestsPerReplica"
    assert _arms(cluster) == {"tiny-llama-stable": (cluster.lad["status"]["currentRevision"], 4)}
    cluster.log.clear()
    reconciler.reconcile_now("ns", "tiny-llama")  # no new measurement: nothing decided, nothing written
    assert not [k for k, _ in cluster.log if k in ("scale", "event")]
    cluster.lad["spec"]["replicas"] = 3  # kubectl scale: reverted, with a Warning naming the way out
    reconciler.reconcile_now("ns", "tiny-llama")
    assert ("event", "ScaleReverted") in cluster.log and ("scale", 4) in cluster.log
    assert _arms(cluster)["tiny-llama-stable"][1] == 4


def test_mid_rollout_the_autoscaled_total_is_split_by_the_weight_within_max() -> None:
    cluster = FakeCluster()
    cluster.lad["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4, "targets": {"waitingRequestsPerReplica": 2}}
    cluster.lad["spec"]["rollout"] = {"steps": [{"setWeight": 50}, {"pause": {}}], "maxSurge": 0}
    reconciler = Reconciler(cluster)  # type: ignore[arg-type]
    reconciler.reconcile_now("ns", "tiny-llama")
    cluster.lad["spec"]["localAttention"]["windowSize"] = 256
    cluster.lad["metadata"]["generation"] = 2
    for _ in range(4):
        reconciler.reconcile_now("ns", "tiny-llama")
    assert sorted(r for _rev, r in _arms(cluster).values()) == [1, 1]  # 50% of 2
    _measured(reconciler, 6, 2)
    reconciler.reconcile_now("ns", "tiny-llama")
    reconciler.reconcile_now("ns", "tiny-llama")
    arms = _arms(cluster)
    assert cluster.lad["status"]["autoscaling"]["desiredReplicas"] == 4
    assert sorted(r for _rev, r in arms.values()) == [2, 2]  # the weight kept, the total at maxReplicas
    assert cluster.lad["status"]["rollout"]["phase"] in ("Progressing", "Paused")


def test_an_invalid_spec_keeps_the_autoscalers_record() -> None:
    cluster = FakeCluster()
    cluster.lad["spec"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4, "targets": {"waitingRequestsPerReplica": 2}}
    reconciler = Reconciler(cluster)  # type: ignore[arg-type]
    _measured(reconciler, 6, 2)
    reconciler.reconcile_now("ns", "tiny-llama")
    kept = cluster.lad["status"]["autoscaling"]
    cluster.lad["spec"]["localAttention"]["windowSize"] = 10**6  # invalid: the running version keeps serving
    reconciler.reconcile_now("ns", "tiny-llama")
    assert cluster.lad["status"]["autoscaling"] == kept and cluster.lad["status"]["phase"] == "InvalidSpec"


def test_the_rollout_step_and_weight_gauges_follow_the_canary() -> None:
    """`localattn_operator_rollout_step` (the dashboard's step panel): 1-based while a canary runs, 0 after."""
    from prometheus_client import REGISTRY

    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "lad": "tiny-llama"})

    cluster = FakeCluster()
    cluster.lad["spec"]["rollout"] = {"steps": [{"pause": {}}]}
    reconcile(cluster)
    assert gauge("localattn_operator_rollout_step") == 0
    cluster.lad["spec"]["localAttention"]["windowSize"] = 256
    cluster.lad["metadata"]["generation"] = 2
    for _ in range(4):
        reconcile(cluster)
    rollout = cluster.lad["status"]["rollout"]
    assert rollout["canaryRevision"] and rollout["phase"] == "Paused", rollout["phase"]
    assert gauge("localattn_operator_rollout_step") == rollout["stepIndex"] + 1 == 1
    assert gauge("localattn_operator_canary_weight_percent") == rollout["achievedWeight"]
