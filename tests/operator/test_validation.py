"""Spec parsing and cross-field rules: precise messages naming the field."""

from typing import Any

import pytest

from localattn_operator.validation import SpecError, parse_model_uri, validate_spec


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"uri": "pvc://models/llama"}, "runtime": {"maxModelLen": 4096}}
    for key, value in overrides.items():
        base[key] = value
    return base


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    return str(info.value)


def test_defaults() -> None:
    parsed = validate_spec({"model": {"uri": "hf://org/name"}})
    assert parsed.replicas == 1
    assert parsed.local_attention.window_size == 1024 and parsed.local_attention.sink_tokens == 4
    assert parsed.runtime.resources.limits == {"nvidia.com/gpu": 1}
    assert parsed.memory.gpu_memory_utilization == 0.9


@pytest.mark.parametrize(
    ("uri", "scheme", "claim", "path"),
    [
        ("pvc://models/a/b", "pvc", "models", "a/b"),
        ("hf://meta-llama/Llama-3.1-8B", "hf", None, "meta-llama/Llama-3.1-8B"),
        ("hf://gpt2", "hf", None, "gpt2"),
        ("s3://my-bucket/llama/v1", "s3", None, "my-bucket/llama/v1"),
        ("/opt/models/tiny", "image", None, "/opt/models/tiny"),
    ],
)
def test_model_uris(uri: str, scheme: str, claim: str | None, path: str) -> None:
    loc = parse_model_uri(uri)
    assert (loc.scheme, loc.claim, loc.path) == (scheme, claim, path)


@pytest.mark.parametrize("uri", ["ftp://x/y", "pvc://", "pvc://Bad_Claim/x", "pvc://a..b/x", "hf://", "s3://x", "models/rel", "/a/../b"])
def test_malformed_model_uris(uri: str) -> None:
    assert "spec.model.uri" in problems(spec(model={"uri": uri}))


def test_window_must_be_below_max_model_len() -> None:
    msg = problems(spec(localAttention={"windowSize": 4096}))
    assert "spec.localAttention.windowSize (4096) must be smaller than spec.runtime.maxModelLen (4096)" in msg


def test_negative_global_layer_index() -> None:
    msg = problems(spec(localAttention={"globalLayers": {"indices": [0, -2]}}))
    assert "globalLayers.indices[1]: layer index -2 is negative" in msg


def test_global_layers_indices_and_every_are_exclusive() -> None:
    assert "either indices or every" in problems(spec(localAttention={"globalLayers": {"indices": [1], "every": 4}}))


def test_schema_level_errors_name_the_field() -> None:
    assert "spec.localAttention.windowSize" in problems(spec(localAttention={"windowSize": 0}))
    assert "spec.runtime.unknownField" in problems(spec(runtime={"unknownField": 1}))
    assert "spec.model" in problems({"replicas": 1})


def test_gpus_and_tensor_parallelism() -> None:
    msg = problems(spec(runtime={"tensorParallelSize": 4, "resources": {"limits": {"nvidia.com/gpu": 2}}}))
    assert "tensorParallelSize (4) needs at least as many GPUs" in msg
    msg = problems(spec(runtime={"resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 2}}}))
    assert "must equal limits" in msg


def test_env_needs_exactly_one_source() -> None:
    msg = problems(spec(runtime={"env": [{"name": "A"}]}))
    assert "spec.runtime.env[0]: set exactly one of value or secretKeyRef (A)" in msg  # the index, as the apiserver names it


def test_every_problem_is_reported_at_once() -> None:
    msg = problems(spec(model={"uri": "ftp://x"}, localAttention={"windowSize": 9000, "globalLayers": {"indices": [-1]}}))
    assert "spec.model.uri" in msg and "windowSize" in msg and "negative" in msg


def test_quantized_kv_cache_needs_local_attention_off() -> None:
    msg = problems(spec(memory={"kvCacheDtype": "fp8_e5m2"}))
    assert "spec.memory.kvCacheDtype (fp8_e5m2)" in msg and "unquantized" in msg
    validate_spec(spec(memory={"kvCacheDtype": "fp8"}, localAttention={"enabled": False}))
    validate_spec(spec(memory={"kvCacheDtype": "bfloat16"}))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"memory": {"kvCacheMemory": "abc"}}, "spec.memory.kvCacheMemory: not a Kubernetes quantity: 'abc'"),
        ({"memory": {"kvCacheMemory": "0"}}, "spec.memory.kvCacheMemory: must be at least 1 byte"),
        ({"runtime": {"resources": {"requests": {"memory": "lots"}}}}, "spec.runtime.resources.requests[memory]: not a"),
        ({"runtime": {"resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "-2"}}}},
         "spec.runtime.resources.limits[cpu]: must not be negative"),
        ({"runtime": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"nvidia.com/gpu": 1, "memory": "1Gi"}}}},
         "spec.runtime.resources.requests[memory] (2Gi) must not exceed limits[memory] (1Gi)"),
        ({"runtime": {"env": [{"name": "HOME", "value": "/root"}]}}, "spec.runtime.env[0].name: HOME is set by the operator"),
        ({"runtime": {"env": [{"name": "A", "value": "1"}, {"name": "POD_IP", "value": "x"}]}},
         "spec.runtime.env[1].name: POD_IP is set by the operator"),
        ({"runtime": {"env": [{"name": "1BAD", "value": "1"}]}}, "spec.runtime.env[0].name: '1BAD' is not a valid"),
        ({"model": {"uri": "hf://org/m", "secretRef": {"name": "s", "key": "k"}},
          "runtime": {"env": [{"name": "HF_TOKEN", "value": "x"}]}}, "HF_TOKEN is set by the operator"),
    ],
)
def test_what_the_apiserver_would_reject_is_caught_naming_the_field(overrides: dict[str, Any], expected: str) -> None:
    assert expected in problems(spec(**overrides))


def test_source_env_is_free_without_a_secret_and_quantities_pass() -> None:
    parsed = validate_spec(spec(
        model={"uri": "hf://org/m"}, runtime={"env": [{"name": "HF_TOKEN", "value": "x"}],
                                            "resources": {"requests": {"memory": "1Gi", "cpu": "500m"},
                                                          "limits": {"nvidia.com/gpu": 1, "memory": "2Gi"}}},
        memory={"kvCacheMemory": "512Mi"},
    ))
    assert parsed.memory.kv_cache_memory == "512Mi"
