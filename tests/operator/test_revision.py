"""Revision ids: stable across ordering and defaults, sensitive to what reaches the pods only."""

import copy
from typing import Any

import pytest

from localattn_operator.revision import revision_of
from localattn_operator.validation import validate_spec

BASE: dict[str, Any] = {
    "model": {"uri": "pvc://models/llama", "servedModelName": "llama"},
    "runtime": {"maxModelLen": 8192, "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}}},
    "localAttention": {"windowSize": 512, "sinkTokens": 4, "globalLayers": {"indices": [0, 5]}},
    "replicas": 2,
}


def rev(raw: dict[str, Any]) -> str:
    return revision_of(validate_spec(raw))


def test_stable_across_dict_ordering() -> None:
    reordered = {k: BASE[k] for k in reversed(list(BASE))}
    reordered["runtime"] = {k: BASE["runtime"][k] for k in reversed(list(BASE["runtime"]))}
    assert rev(reordered) == rev(BASE)


def test_explicit_defaults_do_not_change_it() -> None:
    explicit = copy.deepcopy(BASE)
    explicit["memory"] = {"gpuMemoryUtilization": 0.9, "kvCacheDtype": "auto"}
    explicit["runtime"]["dtype"] = "auto"
    assert rev(explicit) == rev(BASE)


def test_replicas_do_not_change_it() -> None:
    scaled = copy.deepcopy(BASE)
    scaled["replicas"] = 7
    assert rev(scaled) == rev(BASE)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("localAttention", "windowSize", 1024),
        ("localAttention", "sinkTokens", 0),
        ("runtime", "image", "localattn/vllm-runtime:0.2.0"),
        ("runtime", "maxModelLen", 4096),
        ("model", "uri", "pvc://models/llama-v2"),
        ("memory", "kvCacheDtype", "bfloat16"),
    ],
)
def test_pod_affecting_fields_change_it(section: str, field: str, value: Any) -> None:
    changed = copy.deepcopy(BASE)
    changed.setdefault(section, {})[field] = value
    assert rev(changed) != rev(BASE)
    assert len(rev(changed)) == 10
