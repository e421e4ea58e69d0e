"""The rollout wiring on the real control plane: two arms, revision records, migration, restarts.

The dev cluster's simulated pods are Ready at once (no vLLM here: the analysis has no metrics, so its windows
are missing data, which holds; promotion is then asked for with the control annotation). What is checked is
the wiring: the arms, the records, capacity at every sampled moment, and state that survives the operator.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_dev.testing import example_lad

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
WINDOW = EXAMPLE["spec"]["localAttention"]["windowSize"]
assert WINDOW not in (128, 256), "the tests below change the window to these"


def lad_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return example_lad(name, **spec)


def _serving(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class ReadySampler:
    """Counts the LAD's ready, not terminating, pods in a loop (what the Service can route to)."""

    def __init__(self, k8s: Any, namespace: str, name: str):
        self.k8s, self.namespace, self.name = k8s, namespace, name
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = self.k8s.kubectl("get", "pods", "-n", self.namespace, "-l", f"localattn.dev/deployment={self.name}",
                                   "-o", "json", check=False).stdout
            if out:
                self.samples.append(sum(1 for p in json.loads(out)["items"] if _serving(p)))
            time.sleep(0.2)

    def __enter__(self) -> ReadySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def annotate(k8s: Any, namespace: str, name: str, verb: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    k8s.kubectl("annotate", "lad", name, "-n", namespace, "--overwrite", f"localattn.dev/{verb}={stamp}")


def records(k8s: Any, namespace: str, name: str) -> dict[str, int]:
    out = k8s.kubectl("get", "controllerrevisions", "-n", namespace, "-l", f"localattn.dev/deployment={name}",
                      "-o", "json").stdout
    return {r["metadata"]["labels"]["localattn.dev/revision"]: r["revision"] for r in json.loads(out)["items"]}


ROLLOUT = {"steps": [{"setWeight": 50}], "revisionHistoryLimit": 1}
ANALYSIS = {"interval": "10s", "inconclusiveLimit": 50}


def test_a_changed_local_attention_setting_runs_a_canary_arm_and_is_promoted(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("canary", replicas=2, rollout=ROLLOUT, analysis=ANALYSIS))
    first = k8s.wait_lad(namespace, "canary", lambda s: s.get("phase") == "Ready")["status"]["currentRevision"]
    with ReadySampler(k8s, namespace, "canary") as sampler:
        k8s.kubectl("patch", "lad", "canary", "-n", namespace, "--type", "merge",
                    "-p", json.dumps({"spec": {"localAttention": {"windowSize": 256}}}))
        lad = k8s.wait_lad(namespace, "canary", lambda s: (s.get("rollout") or {}).get("phase") == "Progressing"
                           and (s.get("rollout") or {}).get("achievedWeight", 0) > 0)
        second = lad["status"]["rollout"]["canaryRevision"]
        assert second != first and lad["status"]["rollout"]["stableRevision"] == first
        canary = k8s.get(namespace, "deployment", "canary-canary")
        assert canary["spec"]["template"]["metadata"]["labels"]["localattn.dev/revision"] == second
        assert canary["spec"]["selector"]["matchLabels"]["localattn.dev/track"] == "canary"
        config = json.loads(k8s.get(namespace, "configmap", f"canary-runtime-{second}")["data"]["localattn.json"])
        assert config["windowSize"] == 256
        stable_config = json.loads(k8s.get(namespace, "configmap", f"canary-runtime-{first}")["data"]["localattn.json"])
        assert stable_config["windowSize"] == WINDOW  # the stable pods keep their own settings
        # no metrics here: the window is missing data, which holds (never promotes blindly)
        k8s.wait_for(lambda: "AnalysisInconclusive" in k8s.event_reasons(namespace, "canary"),
                     "an inconclusive analysis", timeout=60)
        assert k8s.get(namespace, "lad", "canary")["status"]["rollout"]["phase"] == "Progressing"
        annotate(k8s, namespace, "canary", "promote")
        done = k8s.wait_lad(namespace, "canary", lambda s: (s.get("rollout") or {}).get("phase") == "Promoted"
                            and s.get("phase") == "Ready", timeout=120)
        k8s.wait_for(lambda: k8s.get(namespace, "deployment", "canary-canary", missing_ok=True) is None,
                     "the canary arm to go")
    assert sampler.samples and min(sampler.samples) >= 2, sampler.samples
    status = done["status"]
    assert status["currentRevision"] == second and status["rollout"]["previousRevision"] == first
    stable = k8s.get(namespace, "deployment", "canary-stable")
    assert stable["spec"]["template"]["metadata"]["labels"]["localattn.dev/revision"] == second
    assert stable["spec"]["replicas"] == 2
    assert set(records(k8s, namespace, "canary")) == {first, second}  # the previous one is the rollback target
    reasons = k8s.event_reasons(namespace, "canary")
    assert {"RolloutStarted", "PromotedManually", "Promoted"} <= set(reasons)
    # a third revision: the oldest record is pruned to the limit (1 beyond the protected ones)
    k8s.kubectl("patch", "lad", "canary", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"rollout": {"steps": []}, "localAttention": {"windowSize": 128}}}))
    third = k8s.wait_lad(namespace, "canary", lambda s: (s.get("rollout") or {}).get("phase") == "Promoted"
                         and s.get("currentRevision") not in (first, second) and s.get("phase") == "Ready",
                         timeout=120)["status"]["currentRevision"]
    k8s.wait_for(lambda: set(records(k8s, namespace, "canary")) == {second, third}, "the oldest record to be pruned")
    k8s.wait_for(lambda: k8s.get(namespace, "configmap", f"canary-runtime-{first}", missing_ok=True) is None,
                 "the superseded runtime ConfigMap to be pruned")


def test_with_the_spec_invalid_a_deleted_stable_deployment_is_restored_from_its_record(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("record", replicas=1))
    running = k8s.wait_lad(namespace, "record", lambda s: s.get("phase") == "Ready")["status"]["currentRevision"]
    k8s.kubectl("patch", "lad", "record", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"windowSize": 20000}}}))
    k8s.wait_lad(namespace, "record", lambda s: s.get("phase") == "InvalidSpec")
    uid = k8s.get(namespace, "deployment", "record-stable")["metadata"]["uid"]
    k8s.kubectl("delete", "deployment", "record-stable", "-n", namespace, "--wait=true")
    restored = k8s.wait_for(lambda: (d := k8s.get(namespace, "deployment", "record-stable", missing_ok=True))
                            and d["metadata"]["uid"] != uid and d, "the stable Deployment to be restored")
    assert restored["spec"]["template"]["metadata"]["labels"]["localattn.dev/revision"] == running
    config = k8s.get(namespace, "configmap", f"record-runtime-{running}")
    assert json.loads(config["data"]["localattn.json"])["windowSize"] == WINDOW  # what ran, not the invalid spec
    # readyReplicas can reach 1 before Ready does (the restored Deployment may count the old ReplicaSet's pod
    # before it has observed and rolled out its own spec), so wait for the settled state, not the count
    lad = k8s.wait_lad(namespace, "record", lambda s: s.get("phase") == "InvalidSpec" and s.get("readyReplicas") == 1
                       and any(c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions") or []))
    status = lad["status"]
    assert status["currentRevision"] == running and status["ready"] == "1/1"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["InvalidSpec"]["status"] == "True" and conditions["Ready"]["status"] == "True"


def test_a_single_deployment_lad_is_migrated_to_arms_without_dropping_ready_pods(k8s, operator, namespace) -> None:
    from localattn_operator.render import Owner, definition_of, render_arm
    from localattn_operator.validation import validate_spec

    operator.stop()
    manifest = lad_manifest("old", replicas=2)
    k8s.apply(namespace, manifest)
    uid = k8s.get(namespace, "lad", "old")["metadata"]["uid"]
    # the shape an operator before arms rendered: one Deployment named like the LAD, no track, one mutable ConfigMap
    definition = definition_of(validate_spec(manifest["spec"]))
    legacy = render_arm(Owner("old", namespace, uid), definition, "stable", 2)
    legacy["metadata"]["name"] = "old"
    legacy["metadata"]["labels"].pop("localattn.dev/track")
    legacy["spec"]["selector"]["matchLabels"] = {"localattn.dev/deployment": "old"}
    template = legacy["spec"]["template"]
    template["metadata"]["labels"].pop("localattn.dev/track")
    template["metadata"]["labels"]["localattn.dev/revision"] = "0ldrev0000"
    runtime = next(v for v in template["spec"]["volumes"] if v["name"] == "runtime-config")
    runtime["configMap"]["name"] = "old-runtime"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "data": definition.runtime_data,
                  "metadata": {**legacy["metadata"], "name": "old-runtime"}}
    k8s.apply(namespace, config_map)
    k8s.apply(namespace, legacy)
    k8s.wait_for(lambda: len([p for p in k8s.pods(namespace, "localattn.dev/deployment=old") if _serving(p)]) == 2,
                 "the old Deployment's pods to be ready")
    with ReadySampler(k8s, namespace, "old") as sampler:
        operator.start()
        k8s.wait_for(lambda: k8s.get(namespace, "deployment", "old", missing_ok=True) is None,
                     "the old Deployment to be deleted", timeout=120)
        k8s.wait_lad(namespace, "old", lambda s: s.get("phase") == "Ready" and s.get("ready") == "2/2")
    assert sampler.samples and min(sampler.samples) >= 2, sampler.samples
    assert k8s.get(namespace, "deployment", "old-stable")["spec"]["replicas"] == 2
    k8s.wait_for(lambda: k8s.get(namespace, "configmap", "old-runtime", missing_ok=True) is None,
                 "the old ConfigMap to be pruned")


def test_an_operator_killed_mid_rollout_resumes_from_the_status(k8s, operator, namespace) -> None:
    k8s.apply(namespace, lad_manifest("resume", replicas=2, rollout={"steps": [{"setWeight": 50}]},
                                      analysis={"interval": "5m"}))
    first = k8s.wait_lad(namespace, "resume", lambda s: s.get("phase") == "Ready")["status"]["currentRevision"]
    k8s.kubectl("patch", "lad", "resume", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"sinkTokens": 8}}}))
    mid = k8s.wait_lad(namespace, "resume", lambda s: (s.get("rollout") or {}).get("phase") == "Progressing"
                       and (s.get("rollout") or {}).get("settledAt"))["status"]["rollout"]
    operator.kill()
    operator.start()
    time.sleep(3)  # the new operator's first passes: nothing may restart or reset the rollout
    again = k8s.get(namespace, "lad", "resume")["status"]["rollout"]
    assert (again["phase"], again["canaryRevision"], again["stepIndex"], again["startedAt"], again["settledAt"]) == (
        mid["phase"], mid["canaryRevision"], mid["stepIndex"], mid["startedAt"], mid["settledAt"])
    annotate(k8s, namespace, "resume", "promote")
    done = k8s.wait_lad(namespace, "resume", lambda s: (s.get("rollout") or {}).get("phase") == "Promoted"
                        and s.get("phase") == "Ready", timeout=120)
    assert done["status"]["currentRevision"] == mid["canaryRevision"] != first
    assert k8s.event_reasons(namespace, "resume").count("RolloutStarted") == 1


def _route_weights(k8s: Any, namespace: str, route: str) -> dict[str, int]:
    found = k8s.get(namespace, "httproute", route)
    return {ref["name"]: ref.get("weight", 1) for rule in found["spec"]["rules"] for ref in rule["backendRefs"]}


def test_the_gateway_api_router_sets_the_routes_weights_per_step(k8s, operator, namespace) -> None:
    from localattn_dev.gatewayschema import ensure_installed

    # the dev cluster's structural HTTPRoute schema (no registry ships the Gateway API CRDs)
    assert ensure_installed(k8s.kubeconfig)
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "llm"},
             "spec": {"rules": [{"backendRefs": [{"name": "gw-stable", "port": 8000}, {"name": "gw-canary", "port": 8000}]}]}}
    k8s.apply(namespace, route)
    rollout = {"steps": [{"setWeight": 50}], "router": {"gatewayAPI": {"httpRoute": "llm"}}}
    k8s.apply(namespace, lad_manifest("gw", replicas=2, rollout=rollout, analysis=ANALYSIS))
    k8s.wait_lad(namespace, "gw", lambda s: s.get("phase") == "Ready")
    k8s.wait_for(lambda: _route_weights(k8s, namespace, "llm") == {"gw-stable": 100, "gw-canary": 0}, "100/0 at rest")
    for track in ("stable", "canary"):
        assert k8s.get(namespace, "service", f"gw-{track}")["spec"]["selector"] == {
            "localattn.dev/deployment": "gw", "localattn.dev/track": track}
    k8s.kubectl("patch", "lad", "gw", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"localAttention": {"windowSize": 256}}}))
    k8s.wait_for(lambda: _route_weights(k8s, namespace, "llm") == {"gw-stable": 50, "gw-canary": 50}, "50/50 at step 1")
    lad = k8s.wait_lad(namespace, "gw", lambda s: (s.get("rollout") or {}).get("achievedWeight") == 50)
    assert lad["status"]["rollout"]["desiredWeight"] == 50 and lad["status"]["canaryWeight"] == 50
    annotate(k8s, namespace, "gw", "promote")
    k8s.wait_lad(namespace, "gw", lambda s: (s.get("rollout") or {}).get("phase") == "Promoted" and s.get("phase") == "Ready",
                 timeout=120)
    k8s.wait_for(lambda: _route_weights(k8s, namespace, "llm") == {"gw-stable": 100, "gw-canary": 0}, "100/0 promoted")
    # a route that does not exist: a clear condition and event, nothing changed
    k8s.kubectl("patch", "lad", "gw", "-n", namespace, "--type", "merge",
                "-p", json.dumps({"spec": {"rollout": {"router": {"gatewayAPI": {"httpRoute": "nope"}}}}}))
    lad = k8s.wait_lad(namespace, "gw", lambda s: any(c["type"] == "Degraded" and c["reason"] == "TrafficRouterError"
                                                      for c in s.get("conditions", [])))
    degraded = next(c for c in lad["status"]["conditions"] if c["type"] == "Degraded")
    assert "HTTPRoute" in degraded["message"] and "nope" in degraded["message"]
    assert "TrafficRouterError" in k8s.event_reasons(namespace, "gw")
    assert _route_weights(k8s, namespace, "llm") == {"gw-stable": 100, "gw-canary": 0}
