"""A planted Secret (an `hf://` token) never leaves the Secret: after a run of the real operator (a process) through
creation, readiness, an invalid spec (Warning events, InvalidSpec status), a new revision and back, the token's
value - plain or base64 - appears in no output: the operator's log, any event of the namespace, the LAD and its
status, any ConfigMap, any ControllerRevision, any Deployment, Service or NetworkPolicy, and any pod's spec
(args, env values, everything). The token reaches the pod by reference only (`secretKeyRef`), which is asserted
too, so the search could not pass by the operator dropping the reference."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
KINDS = "localattndeployments,configmaps,controllerrevisions,deployments,replicasets,services,networkpolicies,pods,events"


def test_the_hf_token_appears_in_no_output(k8s: Any, operator: Any, namespace: str) -> None:
    token = f"hf_leakcanary{uuid.uuid4().hex}"
    needles = [token, base64.b64encode(token.encode()).decode(), token[::-1]]
    k8s.apply(namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
                          "type": "Opaque", "stringData": {"token": token}})
    lad = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
    for demo_only in ("rollout", "analysis", "probe", "cost"):
        lad["spec"].pop(demo_only, None)
    lad["spec"]["replicas"] = 1
    lad["spec"]["model"] = {"uri": "hf://org/gated-model", "revision": "main",
                            "secretRef": {"name": "hf-token", "key": "token"}}
    lad["spec"]["runtime"]["env"].append({"name": "HUGGING_FACE_HUB_TOKEN",
                                          "secretKeyRef": {"name": "hf-token", "key": "token"}})
    lad["spec"]["networkPolicy"] = {"enabled": True}
    name = lad["metadata"]["name"]
    k8s.apply(namespace, lad)
    k8s.wait_lad(namespace, name, lambda s: s.get("phase") == "Ready", timeout=120)

    broken = copy.deepcopy(lad)  # a Warning event and InvalidSpec, with the spec's values in the messages
    broken["spec"]["localAttention"]["windowSize"] = 10**6
    broken["spec"]["runtime"]["env"].append({"name": "HF_TOKEN", "secretKeyRef": {"name": "hf-token", "key": "token"}})
    k8s.apply(namespace, broken)
    k8s.wait_lad(namespace, name, lambda s: s.get("phase") == "InvalidSpec", timeout=60)
    lad["spec"]["localAttention"]["windowSize"] = 32  # a new revision, rolled out
    k8s.apply(namespace, lad)
    k8s.wait_lad(namespace, name, lambda s: s.get("phase") == "Ready" and s.get("observedGeneration", 0) >= 3,
                 timeout=120)

    outputs = {"operator log": "\n".join(p.read_text(errors="replace") for p in operator.log_dir.glob("operator-*.log"))}
    everything = json.loads(k8s.kubectl("get", KINDS, "-n", namespace, "-o", "json").stdout)["items"]
    assert {o["kind"] for o in everything} >= {"LocalAttnDeployment", "ConfigMap", "ControllerRevision", "Deployment",
                                               "Pod", "Event", "NetworkPolicy", "Service"}
    for obj in everything:
        outputs[f"{obj['kind']}/{obj['metadata']['name']}"] = json.dumps(obj)
    for where, text in outputs.items():
        for needle in needles:
            assert needle not in text, f"the token leaked into {where}"

    # ... and it was referenced, not dropped: each serving pod gets it through secretKeyRef only.
    pods = [o for o in everything if o["kind"] == "Pod"]
    assert pods
    for pod in pods:
        env = {e["name"]: e for c in pod["spec"]["containers"] for e in c.get("env", [])}
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    warnings = [e for e in everything if e["kind"] == "Event" and e["type"] == "Warning"]
    assert any(e["reason"] == "InvalidSpec" for e in warnings), [e["reason"] for e in warnings]
