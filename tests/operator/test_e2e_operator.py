"""The operator on the real local control plane: kubectl apply, real kopf, real controllers, fake GPU nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_dev.testing import example_lad

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())


def lad_manifest(name: str, **spec_overrides: Any) -> dict[str, Any]:
    return example_lad(name, **spec_overrides)


def test_example_creates_children_and_becomes_ready(k8s, operator, namespace) -> None:
    k8s.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "deployment.yaml"))
    lad = k8s.wait_lad(namespace, "tiny-llama", lambda s: s.get("phase") == "Ready")
    status = lad["status"]
    assert status["readyReplicas"] == 2 and status["replicas"] == 2 and status["ready"] == "2/2"
    assert status["observedGeneration"] == lad["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Degraded": "False", "InvalidSpec": "False",
    }
    dep = k8s.get(namespace, "deployment", "tiny-llama-stable")
    assert dep["metadata"]["ownerReferences"][0]["uid"] == lad["metadata"]["uid"]
    assert dep["spec"]["selector"]["matchLabels"] == {"localattn.dev/deployment": "tiny-llama", "localattn.dev/track": "stable"}
    assert dep["metadata"]["labels"]["localattn.dev/revision"] == status["currentRevision"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"] and container["args"][0] == "/models/tiny-llama"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["securityContext"]["runAsNonRoot"] is True
    svc = k8s.get(namespace, "service", "tiny-llama")
    assert svc["spec"]["selector"] == {"localattn.dev/deployment": "tiny-llama"}
    runtime = k8s.get(namespace, "configmap", f"tiny-llama-runtime-{status['currentRevision']}")
    assert runtime["immutable"] is True
    config = json.loads(runtime["data"]["localattn.json"])
    assert config["enabled"] is False  # the example is the full-attention baseline, its local setting switched off
    assert config["windowSize"] == 64 and config["sinkTokens"] == 4 and config["globalLayers"] == {"indices": [0]}
    pods = k8s.pods(namespace, "localattn.dev/deployment=tiny-llama")
    assert len(pods) == 2
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("localattn-gpu") for p in pods)
    reasons = k8s.event_reasons(namespace, "tiny-llama")
    assert "Created" in reasons and "Ready" in reasons
    table = k8s.kubectl("get", "lad", "-n", namespace).stdout
    assert "PHASE" in table and "Ready" in table and "2/2" in table


def test_scale_subresource_changes_replicas_not_revision(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("scaled", replicas=1))
    before = k8s.wait_lad(namespace, "scaled", lambda s: s.get("phase") == "Ready")["status"]
    k8s.kubectl("scale", "lad", "scaled", "-n", namespace, "--replicas", "3")
    after = k8s.wait_lad(namespace, "scaled", lambda s: s.get("ready") == "3/3" and s.get("phase") == "Ready")
    assert after["status"]["currentRevision"] == before["currentRevision"]
    assert k8s.get(namespace, "deployment", "scaled-stable")["spec"]["replicas"] == 3
    assert after["status"]["selector"] == "localattn.dev/deployment=scaled"
    assert "Scaled" in k8s.event_reasons(namespace, "scaled")


def test_spec_change_rolls_the_deployment(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("roll", replicas=1))
    first = k8s.wait_lad(namespace, "roll", lambda s: s.get("phase") == "Ready")
    k8s.kubectl("patch", "lad", "roll", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"windowSize": 1024}}}))
    second = k8s.wait_lad(
        namespace, "roll",
        lambda s: s.get("currentRevision") != first["status"]["currentRevision"] and s.get("phase") == "Ready",
    )
    assert second["status"]["observedGeneration"] == first["status"]["observedGeneration"] + 1
    dep = k8s.get(namespace, "deployment", "roll-stable")
    assert dep["spec"]["template"]["metadata"]["labels"]["localattn.dev/revision"] == second["status"]["currentRevision"]
    runtime = k8s.get(namespace, "configmap", f"roll-runtime-{second['status']['currentRevision']}")
    assert json.loads(runtime["data"]["localattn.json"])["windowSize"] == 1024
    k8s.wait_for(lambda: k8s.get(namespace, "deployment", "roll-canary", missing_ok=True) is None, "the canary arm to go")
    assert "RollingUpdate" in k8s.event_reasons(namespace, "roll")


def test_schema_rejects_what_it_can_express(k8s, operator, namespace) -> None:
    bad = lad_manifest("bad", localAttention={"windowSize": 0})
    result = k8s.apply(namespace, bad, check=False)
    assert result.returncode != 0
    assert "windowSize" in result.stderr and "greater than or equal to 1" in result.stderr
    bad = lad_manifest("bad", runtime={"dtype": "int3"})
    result = k8s.apply(namespace, bad, check=False)
    assert result.returncode != 0 and "dtype" in result.stderr


def test_invalid_spec_is_reported_and_the_running_version_keeps_serving(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("keep", replicas=1))
    ready = k8s.wait_lad(namespace, "keep", lambda s: s.get("phase") == "Ready")
    dep_before = k8s.get(namespace, "deployment", "keep-stable")
    k8s.kubectl("patch", "lad", "keep", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"windowSize": 20000, "globalLayers": {"indices": [-1]}}}}))
    invalid = k8s.wait_lad(namespace, "keep", lambda s: s.get("phase") == "InvalidSpec")
    cond = {c["type"]: c for c in invalid["status"]["conditions"]}["InvalidSpec"]
    assert cond["status"] == "True"
    assert "windowSize (20000) must be smaller than spec.runtime.maxModelLen (16384)" in cond["message"]
    assert "indices[0]: layer index -1 is negative" in cond["message"]
    assert invalid["status"]["currentRevision"] == ready["status"]["currentRevision"]
    assert invalid["status"]["readyReplicas"] == 1
    dep_after = k8s.get(namespace, "deployment", "keep-stable")
    assert dep_after["metadata"]["resourceVersion"] == dep_before["metadata"]["resourceVersion"]
    warnings = k8s.events(namespace, "keep", type_="Warning")
    assert any(e["reason"] == "InvalidSpec" and "windowSize" in e["message"] for e in warnings)
    # fixing the spec recovers
    k8s.kubectl("patch", "lad", "keep", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"windowSize": 64, "globalLayers": {"indices": [0]}}}}))
    k8s.wait_lad(namespace, "keep", lambda s: s.get("phase") == "Ready")


def test_children_deleted_or_edited_by_hand_are_restored(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("drift", replicas=1))
    k8s.wait_lad(namespace, "drift", lambda s: s.get("phase") == "Ready")
    uid = k8s.get(namespace, "deployment", "drift-stable")["metadata"]["uid"]
    k8s.kubectl("delete", "deployment", "drift-stable", "-n", namespace, "--wait=true")
    k8s.wait_for(lambda: (d := k8s.get(namespace, "deployment", "drift-stable", missing_ok=True))
                 and d["metadata"]["uid"] != uid, "the deleted Deployment to be recreated")
    k8s.kubectl("set", "image", "deployment/drift-stable", "-n", namespace, "vllm=evil/image:1")
    k8s.wait_for(
        lambda: k8s.get(namespace, "deployment", "drift-stable")["spec"]["template"]["spec"]["containers"][0]["image"]
        == EXAMPLE["spec"]["runtime"]["image"],
        "the hand-edited image to be restored",
    )
    k8s.kubectl("delete", "service", "drift", "-n", namespace)
    k8s.wait_for(lambda: k8s.get(namespace, "service", "drift", missing_ok=True), "the Service to be recreated")
    k8s.wait_lad(namespace, "drift", lambda s: s.get("phase") == "Ready")
    assert "DriftCorrected" in k8s.event_reasons(namespace, "drift")


def test_deleting_the_lad_garbage_collects_children(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("gone", replicas=1))
    revision = k8s.wait_lad(namespace, "gone", lambda s: s.get("phase") == "Ready")["status"]["currentRevision"]
    k8s.kubectl("delete", "lad", "gone", "-n", namespace)
    for kind, name in (("deployment", "gone-stable"), ("service", "gone"), ("configmap", f"gone-runtime-{revision}"),
                       ("controllerrevision", f"gone-{revision}")):
        k8s.wait_for(lambda kind=kind, name=name: k8s.get(namespace, kind, name, missing_ok=True) is None,
                     f"{kind}/{name} to be garbage-collected", timeout=60)
    k8s.wait_for(lambda: not k8s.pods(namespace, "localattn.dev/deployment=gone"), "pods to go", timeout=60)


def test_more_gpus_than_any_node_has_reports_pending(k8s, operator, namespace) -> None:
    hungry = lad_manifest("hungry", replicas=1,
                          runtime={"resources": {"limits": {"nvidia.com/gpu": 64}, "requests": {"nvidia.com/gpu": 64}},
                                   "tensorParallelSize": 8})
    k8s.apply(namespace, hungry)
    # the scheduler's verdict reaches the status once it has tried, and is reported as a problem once the pod has
    # been Pending past the grace period (LOCALATTN_PENDING_GRACE_SECONDS, 3 s here): wait for that
    lad = k8s.wait_lad(namespace, "hungry", lambda s: s.get("pendingReplicas", 0) >= 1 and s.get("phase") == "Pending"
                       and "nvidia.com/gpu" in str(s))
    status = lad["status"]
    assert status["phase"] == "Pending" and status["readyReplicas"] == 0
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "PodsPending"
    assert "nvidia.com/gpu" in degraded["message"]
    assert "PodsPending" in k8s.event_reasons(namespace, "hungry")


def test_operator_restarted_mid_reconcile_converges(k8s, operator, namespace) -> None:
    operator.stop()
    k8s.apply(namespace, lad_manifest("restart", replicas=2))
    operator.start()
    # kill it as soon as it has started writing children, then start a fresh one
    k8s.wait_for(lambda: k8s.kubectl("get", "controllerrevisions", "-n", namespace, "-o", "name").stdout.strip(),
                 "first child", timeout=60)
    operator.kill()
    operator.start()
    lad = k8s.wait_lad(namespace, "restart", lambda s: s.get("phase") == "Ready" and s.get("ready") == "2/2")
    deployments = k8s.kubectl("get", "deployments", "-n", namespace, "-l", "localattn.dev/deployment=restart",
                              "-o", "name").stdout.split()
    assert deployments == ["deployment.apps/restart-stable"]
    assert lad["status"]["observedGeneration"] == lad["metadata"]["generation"]
    assert k8s.event_reasons(namespace, "restart").count("Created") == 1


def test_empty_strings_and_secret_references_reach_the_pods(k8s, operator, namespace) -> None:
    env = [{"name": "EMPTY", "value": ""}, {"name": "TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}]
    k8s.apply(namespace, lad_manifest("envs", replicas=1, runtime={"env": env}))
    k8s.wait_lad(namespace, "envs", lambda s: s.get("phase") == "Ready")
    container = k8s.get(namespace, "deployment", "envs-stable")["spec"]["template"]["spec"]["containers"][0]
    rendered = {e["name"]: e for e in container["env"]}
    assert rendered["EMPTY"].get("value", "") == ""
    assert rendered["TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_a_clean_run_emits_no_warning_at_all(k8s, operator, namespace) -> None:
    """Create, become Ready, scale, resync: the deployment controller writes statuses all along, and none of it
    may read as drift (or anything else worth a Warning)."""
    k8s.apply(namespace, lad_manifest("clean", replicas=1))
    k8s.wait_lad(namespace, "clean", lambda s: s.get("phase") == "Ready")
    k8s.kubectl("scale", "lad", "clean", "-n", namespace, "--replicas", "3")
    k8s.wait_lad(namespace, "clean", lambda s: s.get("ready") == "3/3" and s.get("phase") == "Ready")
    k8s.kubectl("scale", "lad", "clean", "-n", namespace, "--replicas", "2")
    k8s.wait_lad(namespace, "clean", lambda s: s.get("ready") == "2/2" and s.get("phase") == "Ready")
    k8s.wait_for(lambda: "Scaled" in k8s.event_reasons(namespace, "clean"), "the Scaled event")
    assert k8s.events(namespace, "clean", type_="Warning") == []
    reasons = k8s.event_reasons(namespace, "clean")
    assert reasons.count("Created") == 1 and "Ready" in reasons


def test_a_spec_the_apiserver_rejects_is_reported_and_not_retried_in_a_loop(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("rejected", replicas=1))
    ready = k8s.wait_lad(namespace, "rejected", lambda s: s.get("phase") == "Ready")
    dep_before = k8s.get(namespace, "deployment", "rejected-stable")
    cm_name = f"rejected-runtime-{ready['status']['currentRevision']}"
    cm_before = k8s.get(namespace, "configmap", cm_name)
    # Valid to our schema and rules, refused by the apiserver (an extended resource beyond int64: validation.py
    # mirrors the apiserver's syntax rules, not its number range); the window change would also reach the
    # ConfigMap, which must stay as it is (nothing is applied when anything is refused).
    k8s.kubectl("patch", "lad", "rejected", "-n", namespace, "--type", "merge", "-p", json.dumps(
        {"spec": {"runtime": {"resources": {"limits": {"example.com/fpga": "9" * 30}}},
                  "localAttention": {"windowSize": 256}}}))
    lad = k8s.wait_lad(namespace, "rejected", lambda s: s.get("phase") == "InvalidSpec")
    cond = {c["type"]: c for c in lad["status"]["conditions"]}["InvalidSpec"]
    assert cond["reason"] == "ApplyRejected" and "Deployment/rejected" in cond["message"]
    assert "example.com/fpga" in cond["message"] and "integer" in cond["message"]  # the apiserver's own message
    assert lad["status"]["currentRevision"] == ready["status"]["currentRevision"]
    assert k8s.get(namespace, "deployment", "rejected-stable")["metadata"]["resourceVersion"] \
        == dep_before["metadata"]["resourceVersion"]
    assert k8s.get(namespace, "configmap", cm_name)["data"] == cm_before["data"]
    names = k8s.kubectl("get", "configmaps,controllerrevisions", "-n", namespace, "-o", "name").stdout
    assert names.count("rejected-runtime-") == 1 and names.count("controllerrevision") == 1  # nothing of the refused
    warnings = [e for e in k8s.events(namespace, "rejected", type_="Warning") if e["reason"] == "ApplyRejected"]
    # One refusal, reported once per change: a second pass racing the first one's status write may post it again
    # (the event is named by the LAD's resourceVersion), but never in a loop.
    assert 1 <= len(warnings) <= 2 and len({w["message"] for w in warnings}) == 1
    assert "example.com/fpga" in warnings[0]["message"]
    # The handler succeeded (the refusal is in status): kopf keeps no retry state for it.
    annotations = k8s.get(namespace, "lad", "rejected")["metadata"].get("annotations", {})
    assert not [k for k in annotations if k.startswith("localattn.dev/lad_changed")], annotations  # kopf's progress
    k8s.kubectl("patch", "lad", "rejected", "-n", namespace, "--type", "json",
                "-p", json.dumps([{"op": "remove", "path": "/spec/runtime/resources/limits/example.com~1fpga"}]))
    k8s.wait_lad(namespace, "rejected", lambda s: s.get("phase") == "Ready"
                 and s.get("currentRevision") != ready["status"]["currentRevision"])


def test_env_the_operator_sets_itself_is_refused_naming_the_field(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("home", replicas=1, runtime={"env": [{"name": "HOME", "value": "/root"}],
                                                                   "resources": {"limits": {"memory": "abc"}}}))
    lad = k8s.wait_lad(namespace, "home", lambda s: s.get("phase") == "InvalidSpec")
    message = {c["type"]: c for c in lad["status"]["conditions"]}["InvalidSpec"]["message"]
    assert "spec.runtime.env[0].name: HOME is set by the operator" in message
    assert "spec.runtime.resources.limits[memory]: not a Kubernetes quantity: 'abc'" in message
    assert k8s.get(namespace, "deployment", "home-stable", missing_ok=True) is None
