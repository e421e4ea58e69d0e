"""The CRD's CEL rules (crds/localattndeployment-cel.yaml, Kubernetes >= 1.25) agree with the operator's Python rules.

Each rule is evaluated by a real CEL implementation (cel-python) on the spec as the apiserver sees it at
admission (server-side defaults applied first, `crd.with_defaults`). For every rule: a spec that breaks it is
refused by CEL *and* by validation.py, naming the same field; the fixed spec passes both. And on random specs
(hypothesis), CEL never refuses what the operator accepts, and every CEL refusal names a field that validation.py
names too: the CEL variant only moves rejections earlier, to `kubectl apply`, and never changes what is valid.

The 1.20 side: the plain CRD carries no rule, and the real 1.20 apiserver refuses the CEL variant (server-side
apply: "field not declared in schema"), which is why there are two files (`localattn crd apply` picks one);
tests/operator/test_e2e_crd_variants.py checks both on the dev cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localattn_operator import crd, models
from localattn_operator.validation import SpecError, validate_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC_SCHEMA = crd.spec_schema(cel=True)["properties"]["spec"]
_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def cel_violations(spec: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(the refused field's path as validation.py writes it, the rule) for every CEL rule `spec` breaks, after
    the apiserver's defaulting. An evaluation error counts as a refusal (it does in the apiserver) but fails
    the test: a rule must be total on every spec the schema admits."""
    found: list[tuple[str, dict[str, str]]] = []

    def walk(schema: dict[str, Any], value: Any, path: str) -> None:
        for rule in schema.get(models.CEL_KEY, []):
            result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
            assert isinstance(result, celpy.celtypes.BoolType), f"{path}: {rule['rule']} -> {result!r}"
            if not result:
                found.append((path + rule.get("fieldPath", ""), rule))
        if isinstance(value, dict):
            for name, prop in (schema.get("properties") or {}).items():
                if name in value:
                    walk(prop, value[name], f"{path}.{name}")
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                walk(schema["items"], item, f"{path}[{i}]")

    walk(SPEC_SCHEMA, crd.with_defaults(SPEC_SCHEMA, copy.deepcopy(spec)), "spec")
    return found


def python_problems(spec: dict[str, Any]) -> list[str]:
    try:
        validate_spec(copy.deepcopy(spec))
    except SpecError as exc:
        return exc.problems
    return []


def names(problems: list[str], path: str) -> bool:
    """Whether some message is about `path` (the path itself, then a separator: `:`, ` `, `[` or `.`)."""
    return any(p.startswith(path) and p[len(path):len(path) + 1] in (":", " ", "[", ".") for p in problems)


def test_every_rule_compiles_and_points_at_a_real_field() -> None:
    rules = crd.cel_rules()
    assert len(rules) >= 15
    for path, rule in rules:
        _program(rule["rule"])
        node = SPEC_SCHEMA if path == "spec" else None
        if node is None:
            node = crd.spec_schema(cel=True)
            for part in path.replace("[]", ".[]").split("."):
                node = node["items"] if part == "[]" else node["properties"][part]
        for part in rule.get("fieldPath", "").split(".")[1:]:
            assert part in node["properties"], f"{path}: fieldPath {rule['fieldPath']} is not a field"
            node = node["properties"][part]
        assert rule["message"] and len(rule["rule"]) < 400


def test_the_plain_crd_has_no_rule_and_the_variant_is_otherwise_identical() -> None:
    plain, variant = crd.build_crd(), crd.build_crd(cel=True)
    assert models.CEL_KEY not in yaml.safe_dump(plain)
    assert crd._without_key(variant, models.CEL_KEY) == plain


def test_committed_cel_variant_matches_generated() -> None:
    committed = (ROOT / "crds" / "localattndeployment-cel.yaml").read_text()
    assert committed == crd.render_yaml(cel=True), "crds/localattndeployment-cel.yaml is stale: run `make crd`"


@pytest.mark.parametrize(("version", "expected"), [
    ({"major": "1", "minor": "20"}, False), ({"major": "1", "minor": "24"}, False),
    ({"major": "1", "minor": "25"}, True), ({"major": "1", "minor": "27+"}, True),
    ({"major": "1", "minor": "33"}, True), ({"major": "", "minor": ""}, False), ({}, False),
])
def test_the_variant_follows_the_server_version(version: dict[str, str], expected: bool) -> None:
    assert crd.wants_cel(version) is expected


BASE: dict[str, Any] = {"model": {"uri": "hf://org/model"}}


def _with(**parts: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **copy.deepcopy(parts)}


_GUARDED = {"rollout": {"postPromotionGuard": "5m"}, "probe": {"enabled": True},
            "analysis": {"interval": "1m", "thresholds": {"maxExactMatchDrop": 0.05}}}
# (refused field, a spec breaking exactly that rule, the same spec fixed)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("spec.localAttention.windowSize", _with(runtime={"maxModelLen": 2048}, localAttention={"windowSize": 2048, "sinkTokens": 0}),
     _with(runtime={"maxModelLen": 2048}, localAttention={"windowSize": 2047, "sinkTokens": 1})),
    ("spec.localAttention.sinkTokens", _with(runtime={"maxModelLen": 2048}, localAttention={"windowSize": 2000, "sinkTokens": 49}),
     _with(runtime={"maxModelLen": 2048}, localAttention={"windowSize": 2000, "sinkTokens": 48})),
    ("spec.localAttention.minContextLength", _with(runtime={"maxModelLen": 4096}, localAttention={"minContextLength": 4097}),
     _with(runtime={"maxModelLen": 4096}, localAttention={"minContextLength": 4096})),
    ("spec.analysis.lengthBuckets", _with(runtime={"maxModelLen": 4096}, analysis={"lengthBuckets": [512, 4096]}),
     _with(runtime={"maxModelLen": 4096}, analysis={"lengthBuckets": [512, 4095]})),
    ("spec.memory.kvCacheDtype", _with(memory={"kvCacheDtype": "fp8_e4m3"}),
     _with(memory={"kvCacheDtype": "fp8_e4m3"}, localAttention={"enabled": False})),
    ("spec.model.revision", _with(model={"uri": "pvc://models/x", "revision": "main"}),
     _with(model={"uri": "hf://org/x", "revision": "main"})),
    ("spec.rollout.postPromotionGuard", {**_with(**_GUARDED), "probe": {"enabled": False},
                                         "analysis": {"interval": "1m"}}, _with(**_GUARDED)),
    ("spec.rollout.postPromotionGuard", {**_with(**_GUARDED), "analysis": {"interval": "1m"}}, _with(**_GUARDED)),
    ("spec.analysis.thresholds.maxPerplexityRatio", _with(analysis={"thresholds": {"maxPerplexityRatio": 1.2}}),
     _with(analysis={"thresholds": {"maxPerplexityRatio": 1.2}}, probe={"enabled": True})),
    ("spec.analysis.thresholds.maxExactMatchDrop", _with(analysis={"thresholds": {"maxExactMatchDrop": 0.1}}),
     _with(analysis={"thresholds": {"maxExactMatchDrop": 0.1}}, probe={"enabled": True})),
    ("spec.runtime.env[1]", _with(runtime={"env": [{"name": "A", "value": "1"}, {"name": "B"}]}),
     _with(runtime={"env": [{"name": "A", "value": "1"}, {"name": "B", "value": ""}]})),
    ("spec.runtime.env[0]", _with(runtime={"env": [{"name": "T", "value": "x", "secretKeyRef": {"name": "s", "key": "k"}}]}),
     _with(runtime={"env": [{"name": "T", "secretKeyRef": {"name": "s", "key": "k"}}]})),
    ("spec.runtime.env[0].name", _with(runtime={"env": [{"name": "HOME", "value": "/root"}]}),
     _with(runtime={"env": [{"name": "HOMEDIR", "value": "/root"}]})),
    ("spec.localAttention.globalLayers", _with(localAttention={"globalLayers": {"indices": [0], "every": 4}}),
     _with(localAttention={"globalLayers": {"every": 4}})),
    ("spec.autoscaling.minReplicas", _with(autoscaling={"minReplicas": 5, "maxReplicas": 4, "targets": {"kvCacheUsage": 0.8}}),
     _with(autoscaling={"minReplicas": 4, "maxReplicas": 4, "targets": {"kvCacheUsage": 0.8}})),
    ("spec.autoscaling.targets", _with(autoscaling={"maxReplicas": 4, "targets": {}}),
     _with(autoscaling={"maxReplicas": 4, "targets": {"p95TTFTSeconds": 0.5}})),
    ("spec.rollout.router.gatewayAPI.endpointPicker",
     _with(rollout={"router": {"gatewayAPI": {"httpRoute": "r", "backendKind": "InferencePool"}}}),
     _with(rollout={"router": {"gatewayAPI": {"httpRoute": "r", "backendKind": "InferencePool",
                                              "endpointPicker": {"name": "epp"}}}})),
    ("spec.rollout.steps[1]", _with(rollout={"steps": [{"setWeight": 10}, {"setWeight": 20, "pause": {}}]}),
     _with(rollout={"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 20}]})),
    ("spec.rollout.steps[0]", _with(rollout={"steps": [{}, {"setWeight": 20}]}), _with(rollout={"steps": [{"setWeight": 20}]})),
    ("spec.rollout.steps[1].analysisInterval", _with(rollout={"steps": [{"setWeight": 10}, {"pause": {}, "analysisInterval": "30s"}]}),
     _with(rollout={"steps": [{"setWeight": 10, "analysisInterval": "30s"}, {"pause": {}}]})),
]


def test_every_rule_has_a_case() -> None:
    covered = {rule["rule"] for _field, broken, _fixed in CASES for _path, rule in cel_violations(broken)}
    assert covered == {rule["rule"] for _path, rule in crd.cel_rules()}


@pytest.mark.parametrize(("field", "broken", "fixed"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_cel_and_python_refuse_the_same_field(field: str, broken: dict[str, Any], fixed: dict[str, Any]) -> None:
    refused = cel_violations(broken)
    assert refused and {path for path, _rule in refused} == {field}, refused
    assert names(python_problems(broken), field), python_problems(broken)
    assert cel_violations(fixed) == []
    assert not names(python_problems(fixed), field), python_problems(fixed)


def test_the_examples_pass_every_rule() -> None:
    for path in sorted((ROOT / "examples").glob("deployment*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == models.KIND:
                assert cel_violations(doc["spec"]) == [], path.name


# Random specs around the rules' fields: the values each rule compares, at and around their boundaries.
def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


near_rules = st.builds(
    lambda max_len, window, sinks, min_ctx, buckets, dtype, enabled, uri, revision, guard, probe, ppl, emd, env,
    layers, scaling, steps: _drop_none({
        "model": {"uri": uri, "revision": revision},
        "runtime": {"maxModelLen": max_len, "env": env},
        "localAttention": {"windowSize": window, "sinkTokens": sinks, "minContextLength": min_ctx,
                           "enabled": enabled, "globalLayers": layers},
        "memory": {"kvCacheDtype": dtype},
        "analysis": {"lengthBuckets": buckets, "thresholds": {"maxPerplexityRatio": ppl, "maxExactMatchDrop": emd}},
        "rollout": {"postPromotionGuard": guard, "steps": steps} if guard or steps is not None else None,
        "probe": {"enabled": probe},
        "autoscaling": scaling,
    }),
    st.none() | st.sampled_from([16, 1024, 2048, 4096]),
    st.none() | st.sampled_from([1, 512, 1024, 2047, 2048, 4096]),
    st.none() | st.sampled_from([0, 4, 48, 49, 4096]),
    st.none() | st.sampled_from([0, 2048, 4096, 5000]),
    st.none() | st.lists(st.sampled_from([1, 512, 2047, 2048, 4095, 4096]), max_size=3),
    st.none() | st.sampled_from(["auto", "float16", "fp8", "fp8_e5m2"]),
    st.none() | st.booleans(),
    st.sampled_from(["hf://org/m", "pvc://models/m", "s3://bucket-x/m", "/models/m", "hf://", "ftp://x"]),
    st.none() | st.just("main"),
    st.none() | st.sampled_from(["5m", "0s"]),
    st.none() | st.booleans(),
    st.none() | st.sampled_from([1.0, 1.5]),
    st.none() | st.sampled_from([0.0, 0.1]),
    st.none() | st.lists(st.fixed_dictionaries({"name": st.sampled_from(["A", "HOME", "HF_TOKEN", "POD_IP", "x y"]),
                                                "value": st.none() | st.just("v"),
                                                "secretKeyRef": st.none() | st.just({"name": "s", "key": "k"})}).map(_drop_none),
                         max_size=3),
    st.none() | st.fixed_dictionaries({"indices": st.none() | st.just([0, 3]), "every": st.none() | st.just(4)}).map(_drop_none),
    st.none() | st.fixed_dictionaries({"minReplicas": st.none() | st.integers(1, 6), "maxReplicas": st.integers(1, 6),
                                       "targets": st.sampled_from([{}, {"kvCacheUsage": 0.8}])}).map(_drop_none),
    st.none() | st.lists(st.fixed_dictionaries({
        "setWeight": st.none() | st.sampled_from([10, 50, 100]),
        "pause": st.none() | st.just({}), "analysisInterval": st.none() | st.just("30s")}).map(_drop_none), max_size=3),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_rules)
def test_cel_only_refuses_what_the_operator_refuses_and_names_the_same_field(spec: dict[str, Any]) -> None:
    problems = python_problems(spec)
    for field, rule in cel_violations(spec):
        assert problems, f"CEL refuses ({rule['rule']}) a spec the operator accepts: {spec}"
        # The operator names the same field, except where it already refuses the field the rule reads from
        # (an unparsable model URI makes `revision` moot for the operator, not for CEL).
        assert names(problems, field) or names(problems, "spec.model.uri"), (field, problems)
