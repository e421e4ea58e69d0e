"""Whole LocalAttnDeployment specs, fuzzed (hypothesis) through validation, rendering and the revision record.

test_rollout_validation.py fuzzes the rollout/analysis sections and test_rollout_properties.py the state
machine; this one fuzzes *every* section at once (model source, runtime image/args/env/resources/scheduling,
local attention, memory, autoscaling, rollout, probe) with valid values near their limits and junk of every
JSON type. Properties:

- nothing raises but `SpecError`, and every message of a rejection starts with a field path that exists in the
  CRD's schema (`spec.runtime.resources.limits[cpu]`: each camelCase segment is a real property);
- an accepted spec renders (ConfigMap, both arms, Service, ControllerRevision) without an exception, JSON-clean,
  deterministically (same spec, same revision), and its record reads back to the same definition;
- an accepted spec passes every CEL rule of the CRD's >= 1.25 variant (admission never refuses it);
- on the real apiserver (e2e, a sample): the LAD itself and every child it renders pass `--dry-run=server`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from localattn_operator import crd, models
from localattn_operator.k8s import Cluster, Rejected, load_api_client
from localattn_operator.render import (
    Owner,
    definition_of,
    render_arm,
    render_config_map,
    render_service,
    service_for,
)
from localattn_operator.revision import parse_record, render_record
from localattn_operator.validation import SpecError, validate_spec

SPEC_SCHEMA = crd.spec_schema()["properties"]["spec"]
OWNER = Owner("fuzz", "ns", "00000000-0000-0000-0000-000000000001")
# Every input the strategies produced, and what became of it (docs/security.md reports the figures).
TALLY = {"tried": 0, "accepted": 0, "rejected": 0}


def _cel() -> Any:
    spec = importlib.util.spec_from_file_location("_cel_rules", Path(__file__).with_name("test_cel_rules.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CEL = _cel()

junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.lists(st.integers(-1, 3), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def sometimes(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes junk of any JSON type."""
    return st.one_of(valid, valid, valid, valid, junk)


def section(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return sometimes(st.fixed_dictionaries({}, optional=fields))


names_s = st.sampled_from(["a", "model-x", "hf-token", "A_b", "x" * 254, "", "UPPER", "a b", "é"])
quantity = st.one_of(st.sampled_from(["1", "2", "500m", "16Gi", "0.5Gi", "1e3", "+1", "1.5", "abc", "", "-1", "1Ki"]),
                     st.integers(-1, 4))
resource_key = st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage", "example.com/fpga", "foo",
                                "hugepages-2Mi", "a/b/c"])
label_key = st.sampled_from(["gpu", "node.kubernetes.io/instance-type", "example.com/pool", "a b", "-x", "x" * 70, ""])
label_value = st.sampled_from(["a100", "", "h100-80gb", "a b", "x" * 70, "-bad", "ok.1"])
env_s = st.fixed_dictionaries({"name": st.sampled_from(["HF_HUB_OFFLINE", "VLLM_LOGGING_LEVEL", "HOME", "HF_TOKEN",
                                                        "1BAD", "a-b.c", "", "POD_IP"])},
                              optional={"value": st.text(max_size=6),
                                        "secretKeyRef": st.fixed_dictionaries({"name": names_s, "key": names_s})})
toleration_s = st.fixed_dictionaries({}, optional={
    "key": label_key, "operator": st.sampled_from(["Exists", "Equal", "In"]), "value": label_value,
    "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute", "Bad"]),
    "tolerationSeconds": st.integers(-5, 3600)})
step_s = st.fixed_dictionaries({}, optional={"setWeight": st.integers(0, 101), "pause": st.sampled_from([{}, {"duration": "30s"}]),
                                             "analysisInterval": st.sampled_from(["30s", "5s", "1m"])})

spec_s = st.fixed_dictionaries(
    {"model": section({
        "uri": st.sampled_from(["hf://org/model", "hf://model", "pvc://models/tiny/llama", "pvc://Bad_Claim/x",
                                "s3://bucket-1/prefix", "s3://x/p", "/models/m", "/models/../etc", "ftp://x", "hf://",
                                "pvc://models/../x", ""]),
        "servedModelName": names_s, "revision": st.sampled_from(["main", "v1.0", ""]),
        "secretRef": st.fixed_dictionaries({"name": names_s, "key": names_s})})},
    optional={
        "runtime": section({
            "image": st.sampled_from(["localattn/vllm-runtime:0.1.0", "reg.example.com:5000/a/b@sha256:" + "a" * 64,
                                      " leading", "", "UPPER/case:1"]),
            "extraArgs": st.lists(st.sampled_from(["--enforce-eager", "--max-num-seqs=4", "--attention-backend=X",
                                                   "$(POD_IP)", "a b", ""]), max_size=3),
            "tensorParallelSize": st.integers(0, 9), "maxModelLen": st.sampled_from([8, 16, 512, 2048, 4096, 131072]),
            "dtype": st.sampled_from(["auto", "bfloat16", "half"]), "port": st.sampled_from([80, 1024, 8000, 65535, 65536]),
            "resources": st.fixed_dictionaries({}, optional={
                "requests": st.dictionaries(resource_key, quantity, max_size=3),
                "limits": st.dictionaries(resource_key, quantity, max_size=3)}),
            "nodeSelector": st.dictionaries(label_key, label_value, max_size=2),
            "tolerations": st.lists(toleration_s, max_size=2),
            "env": st.lists(env_s, max_size=3)}),
        "localAttention": section({
            "enabled": st.booleans(), "windowSize": st.sampled_from([0, 1, 256, 1024, 4096, 10**6]),
            "sinkTokens": st.sampled_from([0, 4, 4096, 4097]), "minContextLength": st.sampled_from([0, 512, 10**6]),
            "globalLayers": st.fixed_dictionaries({}, optional={"indices": st.lists(st.integers(-1, 40), max_size=4),
                                                                "every": st.integers(0, 6), "offset": st.integers(-1, 3)}),
            "calibrationPlan": st.fixed_dictionaries({"configMapName": names_s}, optional={"key": names_s})}),
        "memory": section({
            "gpuMemoryUtilization": st.sampled_from([0, 0.05, 0.9, 1, 1.1]),
            "kvCacheDtype": st.sampled_from(["auto", "fp8", "float16", "int4"]),
            "cpuOffloadGB": st.sampled_from([0, 4, -1]), "swapSpaceGB": st.sampled_from([0, 2.5]),
            "kvCacheMemory": quantity}),
        "replicas": sometimes(st.integers(-1, 12)),
        "autoscaling": section({
            "minReplicas": st.integers(0, 6), "maxReplicas": st.integers(0, 6),
            "targets": st.fixed_dictionaries({}, optional={"kvCacheUsage": st.sampled_from([0, 0.8, 1.5]),
                                                           "waitingRequestsPerReplica": st.sampled_from([2, -1])})}),
        "rollout": section({"steps": st.lists(step_s, max_size=4), "maxSurge": st.sampled_from([0, 1, "25%", "x"]),
                            "postPromotionGuard": st.sampled_from(["5m", "0s", "x"])}),
        "analysis": section({"interval": st.sampled_from(["1m", "5s", "x"]),
                             "thresholds": st.fixed_dictionaries({}, optional={"maxExactMatchDrop": st.sampled_from([0.05, 2])}),
                             "lengthBuckets": st.lists(st.integers(0, 5000), max_size=3)}),
        "probe": section({"enabled": st.booleans(),
                          "goldenSet": st.fixed_dictionaries({"name": names_s, "key": names_s})}),
        "cost": section({"gpuHourPrice": st.sampled_from([0, 2.5]), "currency": st.sampled_from(["USD", "x" * 9])}),
    },
)

# Plausible specs: every value valid on its own (near its limits), so most combinations are accepted and the
# renderer and the apiserver see many different ones; the cross-field rules still refuse some.
gpus = st.integers(1, 4)
valid_resources = st.builds(
    lambda g, cpu, mem, req: {"limits": {"nvidia.com/gpu": g, **({"memory": mem} if mem else {})},
                              "requests": {**({"nvidia.com/gpu": g} if req else {}), **({"cpu": cpu} if cpu else {}),
                                           **({"memory": mem} if mem and req else {})}},
    gpus, st.sampled_from([None, "500m", "2", 4]), st.sampled_from([None, "16Gi", "1G", "512Mi"]), st.booleans())
valid_toleration = st.one_of(
    st.fixed_dictionaries({"key": st.sampled_from(["nvidia.com/gpu", "dedicated"]), "operator": st.just("Equal"),
                           "value": st.sampled_from(["true", "llm"]),
                           "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule"])}),
    st.fixed_dictionaries({"key": st.just("nvidia.com/gpu"), "operator": st.just("Exists")},
                          optional={"effect": st.just("NoExecute"), "tolerationSeconds": st.integers(0, 600)}),
    st.just({"operator": "Exists"}))
valid_spec_s = st.fixed_dictionaries(
    {"model": st.one_of(
        st.fixed_dictionaries({"uri": st.sampled_from(["hf://org/model", "hf://Org/Model-1.5B"])},
                              optional={"revision": st.sampled_from(["main", "v1"]),
                                        "secretRef": st.just({"name": "hf-token", "key": "token"}),
                                        "servedModelName": st.sampled_from(["m", "org/model"])}),
        st.fixed_dictionaries({"uri": st.sampled_from(["pvc://models/tiny", "pvc://m.1/a/b", "s3://bucket-1/p", "/models/m"])},
                              optional={"secretRef": st.just({"name": "creds", "key": "credentials"})}))},
    optional={
        "runtime": st.fixed_dictionaries({}, optional={
            "image": st.sampled_from(["localattn/vllm-runtime:0.1.0", "reg.example.com:5000/a/b@sha256:" + "a" * 64]),
            "extraArgs": st.lists(st.sampled_from(["--enforce-eager", "--max-num-seqs=4", "--attention-backend=X",
                                                   "--api-key", "$(POD_NAME)"]), max_size=3),
            "tensorParallelSize": st.just(1), "maxModelLen": st.sampled_from([2048, 4096, 32768]),
            "dtype": st.sampled_from(["auto", "bfloat16"]), "port": st.sampled_from([1024, 8000, 65535]),
            "resources": valid_resources,
            "nodeSelector": st.dictionaries(st.sampled_from(["gpu", "node.kubernetes.io/instance-type", "example.com/pool"]),
                                            st.sampled_from(["a100", "", "h100-80gb", "ok.1"]), max_size=2),
            "tolerations": st.lists(valid_toleration, max_size=2),
            "env": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["HF_HUB_OFFLINE", "VLLM_LOGGING_LEVEL", "A_1"])},
                                                  optional={"value": st.sampled_from(["1", "", "a b"])}).filter(lambda e: "value" in e)
                            | st.fixed_dictionaries({"name": st.just("API_KEY"),
                                                     "secretKeyRef": st.just({"name": "api", "key": "key"})}),
                            max_size=2, unique_by=lambda e: e["name"])}),
        "localAttention": st.fixed_dictionaries({}, optional={
            "enabled": st.booleans(), "windowSize": st.sampled_from([1, 256, 1024]), "sinkTokens": st.sampled_from([0, 4, 64]),
            "minContextLength": st.sampled_from([0, 512]),
            "globalLayers": st.sampled_from([{}, {"indices": [0, 5]}, {"every": 4, "offset": 1}]),
            "calibrationPlan": st.just({"configMapName": "plan"})}),
        "memory": st.fixed_dictionaries({}, optional={
            "gpuMemoryUtilization": st.sampled_from([0.05, 0.9, 1]), "kvCacheDtype": st.sampled_from(["auto", "float16"]),
            "cpuOffloadGB": st.sampled_from([0, 4]), "swapSpaceGB": st.sampled_from([0, 2.5]),
            "kvCacheMemory": st.sampled_from(["512Mi", "4Gi", 1 << 30])}),
        "replicas": st.integers(0, 6),
        "autoscaling": st.fixed_dictionaries({"maxReplicas": st.integers(4, 6), "targets": st.just({"kvCacheUsage": 0.8})},
                                             optional={"minReplicas": st.integers(1, 4)}),
        "rollout": st.fixed_dictionaries({}, optional={"steps": st.sampled_from([[], [{"setWeight": 20}, {"pause": {}}]]),
                                                       "maxSurge": st.sampled_from([1, "25%"])}),
        "probe": st.fixed_dictionaries({"enabled": st.booleans()},
                                       optional={"goldenSet": st.just({"name": "golden", "key": "set.jsonl"})}),
        "cost": st.just({"gpuHourPrice": 2.5}),
    },
)
# What the fuzz found the apiserver refusing in specs the operator used to accept (now refused by validation.py,
# naming the field), and near misses it must keep accepting: merged one at a time into plausible specs.
EDGES: list[dict[str, Any]] = [
    {"runtime": {"nodeSelector": {"a b": "x"}}}, {"runtime": {"nodeSelector": {"gpu": "a b"}}},
    {"runtime": {"nodeSelector": {"gpu": "x" * 64}}}, {"runtime": {"nodeSelector": {"example.com/pool": ""}}},
    {"runtime": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
    {"runtime": {"tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule",
                                  "tolerationSeconds": 5}]}},
    {"runtime": {"tolerations": [{"operator": "Equal", "value": "v"}]}},
    {"runtime": {"tolerations": [{"key": "a b", "operator": "Exists"}]}},
    {"runtime": {"tolerations": [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}]}},
    {"runtime": {"image": " localattn/x:1"}}, {"runtime": {"image": "localattn/x:1 "}},
    {"runtime": {"resources": {"limits": {"foo": "1"}}}}, {"runtime": {"resources": {"limits": {"a/b/c": "1"}}}},
    {"runtime": {"resources": {"requests": {"example.com/fpga": "1"}}}},
    {"runtime": {"resources": {"requests": {"example.com/fpga": "1"}, "limits": {"example.com/fpga": "2"}}}},
    {"runtime": {"resources": {"requests": {"example.com/fpga": 1}, "limits": {"example.com/fpga": "1"}}}},
    {"runtime": {"resources": {"limits": {"example.com/fpga": "500m"}}}},
    {"runtime": {"resources": {"limits": {"hugepages-2Mi": "2Mi"}}}},
    {"runtime": {"resources": {"limits": {"hugepages-2Mi": "2Mi", "memory": "1Gi"}}}},
    {"runtime": {"resources": {"limits": {"cpu": "1e30", "memory": "1.5"}}}},
    {"model": {"uri": "hf://org/m", "secretRef": {"name": "Bad_Name", "key": "k"}}},
    {"model": {"uri": "hf://org/m", "secretRef": {"name": "s", "key": "a b"}}},
    {"model": {"uri": "s3://bucket-1/p", "secretRef": {"name": "c", "key": ".."}}},
    {"model": {"uri": "hf://org/m", "servedModelName": "a b $(X)"}}, {"model": {"uri": "pvc://models/a b"}},
    {"runtime": {"env": [{"name": "X", "secretKeyRef": {"name": "UP", "key": "k"}}]}},
    {"runtime": {"env": [{"name": "X", "secretKeyRef": {"name": "s.1", "key": "_k-.1"}}]}},
    {"localAttention": {"calibrationPlan": {"configMapName": "Bad_Name"}}},
    {"localAttention": {"calibrationPlan": {"configMapName": "p", "key": "a/b"}}},
    {"probe": {"enabled": True, "goldenSet": {"name": "g", "key": "../x"}}},
    {"runtime": {"resources": {"limits": {"nvidia.com/gpu": 0}}}}, {"replicas": 1000},
    {"runtime": {"extraArgs": ["--model", "$(HF_TOKEN)", "--x=$(POD_IP)"]}},
]


def merged(spec: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    for key, value in patch.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


edge_s = st.builds(merged, valid_spec_s, st.sampled_from(EDGES))
any_spec_s = st.one_of(valid_spec_s, edge_s, spec_s)


def field_of(message: str) -> str:
    """The field path a message starts with (`spec.a.b[0].c`), up to the first `: ` or space."""
    return re.split(r": | ", message, maxsplit=1)[0]


def exists_in_schema(path: str) -> bool:
    """Every segment of `spec.a[0].b` (or pydantic's `spec.a.0.b`) is a property of the schema; an index or a
    map key steps into items or values; after a map key, or pydantic's int/str tag of an int-or-string, the
    rest is the key's or the tag's own text."""
    tokens = re.findall(r"\[[^\]]*\]|[^.\[]+", path)
    if not tokens or tokens[0] != "spec" or len(tokens) < 2:
        return False
    node: dict[str, Any] = SPEC_SCHEMA
    for token in tokens[1:]:
        properties = node.get("properties") or {}
        if token.startswith("[") or token.isdigit():
            node = node.get("items") or node.get("additionalProperties") or {}
            if not node:
                return False
        elif token in properties:
            node = properties[token]
        elif isinstance(node.get("additionalProperties"), dict):
            return True  # a map key (which may itself contain dots)
        else:  # pydantic's tag of the int-or-string member that failed ends the path; anything else is made up
            return bool(node.get("x-kubernetes-int-or-string") and token in ("int", "str"))
    return True


def children(spec: models.LocalAttnDeploymentSpec) -> list[dict[str, Any]]:
    definition = definition_of(spec)
    return [render_config_map(OWNER, definition), render_arm(OWNER, definition, "stable", spec.replicas),
            render_arm(OWNER, definition, "canary", 1, 2), service_for(OWNER, definition),
            render_service(OWNER, spec), render_record(OWNER, definition, 1)]


def outcome(raw: dict[str, Any]) -> models.LocalAttnDeploymentSpec | None:
    """The spec if accepted; on a rejection, check that every message names a real field, and return None."""
    TALLY["tried"] += 1
    try:
        spec = validate_spec(json.loads(json.dumps(raw)))
    except SpecError as exc:
        TALLY["rejected"] += 1
        assert exc.problems
        for message in exc.problems:
            path = field_of(message)
            if message.endswith("Extra inputs are not permitted"):  # names the unknown field: its parent exists
                path = path.rpartition(".")[0]
            assert exists_in_schema(path), f"names no field of the schema: {message!r}"
        return None
    TALLY["accepted"] += 1
    return spec


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_spec_s)
def test_whole_specs_validate_render_and_record_or_are_refused_naming_the_field(raw: dict[str, Any]) -> None:
    spec = outcome(raw)
    if spec is None:
        return
    rendered = children(spec)
    assert json.loads(json.dumps(rendered)) == rendered  # what is sent is plain JSON
    assert definition_of(validate_spec(json.loads(json.dumps(raw)))).revision == definition_of(spec).revision
    record = parse_record(json.loads(json.dumps(rendered[-1])))
    assert record is not None and record.definition == definition_of(spec)
    assert CEL.cel_violations(raw) == [], "the CRD's CEL variant would refuse a spec the operator accepts"


def test_a_rejection_names_a_field_that_exists() -> None:
    """The schema walk itself: real paths pass, made-up ones do not (so the property above could fail)."""
    assert exists_in_schema("spec.runtime.resources.limits[nvidia.com/gpu]")
    assert exists_in_schema("spec.rollout.steps[2].analysisInterval")
    assert exists_in_schema("spec.runtime.env[0].name")
    assert exists_in_schema("spec.rollout.steps.0.setWeight")
    assert not exists_in_schema("spec.runtime.bogus")
    assert not exists_in_schema("spec.runtime.limits")
    assert not exists_in_schema("spec")
    assert not exists_in_schema("runtime.port")


# --- the real apiserver: a sample of accepted specs, dry-run -------------------------------------------------

def accepted(raw: dict[str, Any]) -> models.LocalAttnDeploymentSpec | None:
    try:
        return validate_spec(json.loads(json.dumps(raw)))
    except SpecError:
        return None


@pytest.mark.e2e
def test_accepted_specs_render_what_the_apiserver_accepts(k8s: Any, namespace: str, crd_installed: None) -> None:
    sample: list[dict[str, Any]] = []

    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(st.one_of(valid_spec_s, edge_s))
    def collect(raw: dict[str, Any]) -> None:
        assume(accepted(raw) is not None)
        sample.append(raw)

    collect()
    assert len(sample) >= 15, len(sample)
    edges = [merged({"model": {"uri": "hf://org/m"}}, patch) for patch in EDGES]
    specs = sample + [e for e in edges if accepted(e) is not None]
    docs: list[tuple[int, dict[str, Any]]] = []
    for i, raw in enumerate(specs):
        spec = accepted(raw)
        assert spec is not None
        owner = Owner(f"fuzz-{i}", namespace, OWNER.uid)
        definition = definition_of(spec)
        docs += [(i, d) for d in (
            render_config_map(owner, definition), render_arm(owner, definition, "canary", spec.replicas, 2),
            service_for(owner, definition), render_record(owner, definition, 1),
            {"apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": models.KIND,
             "metadata": {"name": owner.name, "namespace": namespace}, "spec": raw})]
    # The operator's own pre-write check (a server-side apply, dry run), a few at a time.
    cluster = Cluster(load_api_client(str(k8s.kubeconfig)))

    def refusal(item: tuple[int, dict[str, Any]]) -> str | None:
        try:
            cluster.plan_apply(item[1])
        except Rejected as exc:
            return f"{exc}\n  spec: {json.dumps(specs[item[0]])}"
        return None

    with ThreadPoolExecutor(4) as pool:
        refused = [r for r in pool.map(refusal, docs) if r]
    assert not refused, "\n".join(refused)
    TALLY["dry_run_specs"], TALLY["dry_run_objects"] = len(specs), len(docs)
