"""The operator <-> runtime contract: every runtime configuration the operator renders (each kind of spec) is
valid under the contract's JSON Schema and parses in the plugin to the configuration the spec meant, with the
calibration plan and golden set files where the pod mounts them. Both sides read `localattn_contract`; this
test is the only place that imports both the operator and the runtime."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import localattn_contract as contract
from localattn_operator import render
from localattn_operator.render import Owner, render_children
from localattn_operator.validation import validate_spec
from localattn_runtime import config
from localattn_runtime.config import GlobalLayers

OWNER = Owner(name="llama", namespace="serving", uid="1234-uid")
NUM_LAYERS = 12

GLOBAL_LAYERS: dict[str, tuple[dict[str, Any] | None, frozenset[int]]] = {
    "default": (None, frozenset()),
    "indices": ({"indices": [0, 5, 11]}, frozenset({0, 5, 11})),
    "empty-indices": ({"indices": []}, frozenset()),
    "every": ({"every": 4}, frozenset({0, 4, 8})),
    "every-offset": ({"every": 3, "offset": 2}, frozenset({2, 5, 8, 11})),
}
PROBES: dict[str, dict[str, Any] | None] = {
    "probe-default": None,
    "probe-off": {"enabled": False},
    "probe-on": {"enabled": True, "intervalSeconds": 30, "maxTokens": 8},
    "probe-golden": {"enabled": True, "goldenSet": {"name": "golden", "key": "set.json"}},
}
PLANS: dict[str, dict[str, Any] | None] = {
    "no-plan": None,
    "plan": {"configMapName": "llama-plan", "key": "plan.json"},
    "plan-default-key": {"configMapName": "llama-plan"},
}
LOCAL: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tuned": {"windowSize": 256, "sinkTokens": 0, "minContextLength": 2048},
    "disabled": {"enabled": False},
}


def _raw(local: dict[str, Any], gl: dict[str, Any] | None, probe: dict[str, Any] | None,
         plan: dict[str, Any] | None) -> dict[str, Any]:
    la = dict(local)
    if gl is not None:
        la["globalLayers"] = gl
    if plan is not None:
        la["calibrationPlan"] = plan
    raw: dict[str, Any] = {"model": {"uri": "pvc://models/llama/v1"}, "localAttention": la}
    if probe is not None:
        raw["probe"] = probe
    return raw


def _mounted_files(pod: dict[str, Any], root: Path) -> dict[str, str]:
    """Where the pod's ConfigMap volumes put each key: {path in the container: path under root}."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    out = {}
    for mount in pod["spec"]["containers"][0]["volumeMounts"]:
        cm = volumes[mount["name"]].get("configMap")
        for item in (cm or {}).get("items", []):
            out[f"{mount['mountPath']}/{item['path']}"] = str(root / cm["name"] / item["key"])
    return out


VARIANTS = list(itertools.product(LOCAL, GLOBAL_LAYERS, PROBES, PLANS))


@pytest.mark.parametrize(("local", "gl", "probe", "plan"), VARIANTS)
def test_every_rendered_variant_parses_to_what_the_spec_means(local: str, gl: str, probe: str, plan: str,
                                                              tmp_path: Path) -> None:
    raw = _raw(LOCAL[local], GLOBAL_LAYERS[gl][0], PROBES[probe], PLANS[plan])
    spec = validate_spec(raw)
    kids = {c["kind"]: c for c in render_children(OWNER, spec)}
    rendered = json.loads(kids["ConfigMap"]["data"][contract.CONFIG_FILE])
    jsonschema.validate(rendered, contract.schema())

    pod = kids["Deployment"]["spec"]["template"]
    files = _mounted_files(pod, tmp_path)
    plan_layers = [1, 7]
    if "planFile" in rendered:  # the plugin reads the plan where the pod mounts the LAD's ConfigMap
        local_path = files[rendered["planFile"]]
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        Path(local_path).write_text(json.dumps({"globalLayers": plan_layers}))
        rendered = {**rendered, "planFile": local_path}
    cfg = config.parse(rendered)

    la = spec.local_attention
    assert (cfg.enabled, cfg.window_size, cfg.sink_tokens, cfg.min_context_length) == (
        la.enabled, la.window_size, la.sink_tokens, la.min_context_length)
    want_global = frozenset(plan_layers) if PLANS[plan] else GLOBAL_LAYERS[gl][1]
    assert cfg.global_layer_set(NUM_LAYERS) == want_global
    assert (cfg.probe.enabled, cfg.probe.interval_seconds, cfg.probe.max_tokens) == (
        spec.probe.enabled, spec.probe.interval_seconds, spec.probe.max_tokens)
    if spec.probe.golden_set is not None:
        assert cfg.probe.golden_set_file in files  # a file the pod mounts
    else:
        assert cfg.probe.golden_set_file == contract.default("probe.goldenSetFile")
    # and the runtime's own rendering of that configuration is valid under the same schema
    jsonschema.validate(cfg.to_json(), contract.schema())


def test_the_env_the_operator_sets_is_the_one_the_plugin_reads() -> None:
    pod = render.render_pod_template(OWNER, validate_spec(_raw({}, None, None, None)), "r1")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env[config.ENV_FILE] == f"{render.CONFIG_DIR}/{contract.CONFIG_FILE}"


def test_schema_and_parser_agree_on_what_is_invalid() -> None:
    """The parser rejects what the schema rejects (so neither side drifts into accepting more)."""
    bad: list[dict[str, Any]] = [
        {"windowSize": 0}, {"sinkTokens": -1}, {"minContextLength": -3}, {"unknown": 1},
        {"globalLayers": {"every": 0}}, {"globalLayers": {"indices": [1, 1]}}, {"globalLayers": {"offset": 1}},
        {"globalLayers": {"indices": [1], "every": 2}}, {"probe": {"maxTokens": 0}}, {"probe": {"x": 1}},
        {"probe": {"intervalSeconds": 0}}, {"planFile": ""}, {"enabled": "yes"},
        {"lengthBuckets": [0]}, {"lengthBuckets": "512"},
    ]
    for obj in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, contract.schema())
        with pytest.raises(config.ConfigError):
            config.parse(obj)
    assert config.parse({}).global_layers == GlobalLayers()


@pytest.mark.parametrize("length_buckets", [None, [256], [300, 1000, 5000]])
def test_the_runtime_labels_latency_with_the_buckets_the_operator_queries(length_buckets: list[int] | None) -> None:
    """The runtime's `length_bucket` labels (from the rendered config) are the ones the analysis asks for."""
    from localattn_operator import queries

    raw = _raw({"windowSize": 128}, None, None, None)
    if length_buckets is not None:
        raw["analysis"] = {"lengthBuckets": length_buckets}
    spec = validate_spec(raw)
    kids = {c["kind"]: c for c in render_children(OWNER, spec)}
    rendered = json.loads(kids["ConfigMap"]["data"][contract.CONFIG_FILE])
    jsonschema.validate(rendered, contract.schema())
    runtime_edges = config.parse(rendered).bucket_boundaries()
    operator_edges = queries.spec_bucket_boundaries(spec.analysis.length_buckets, spec.local_attention.window_size)
    assert runtime_edges == operator_edges == (length_buckets or [128, 512])
