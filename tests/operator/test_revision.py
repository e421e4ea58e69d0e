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


def test_it_is_the_hash_of_what_renders_not_of_the_spec() -> None:
    """A spec field that renders the same pods is no new revision; a renderer change is one."""
    from localattn_operator import render
    from localattn_operator.render import definition_of, revision_hash

    spec = validate_spec(BASE)
    definition = definition_of(spec)
    assert definition.revision == rev(BASE) == revision_hash(definition.pod_template, definition.runtime_data)
    # the same rendering reached through another spec (an explicit default) is the same revision
    assert definition_of(validate_spec({**BASE, "probe": {"enabled": False}})).revision == definition.revision
    # a renderer change (another grace period) is a new revision, with the spec unchanged
    changed = dict(definition.pod_template, spec={**definition.pod_template["spec"], "terminationGracePeriodSeconds": 31})
    assert revision_hash(changed, definition.runtime_data) != definition.revision
    assert "labels" not in definition.pod_template["metadata"]  # the LAD's identity is not part of it
    assert render.definition_of(validate_spec(BASE)).revision == definition.revision


def test_records_round_trip_and_prune_to_the_limit_except_protected() -> None:
    from localattn_operator.render import Owner, definition_of
    from localattn_operator.revision import Record, parse_record, records_to_prune, render_record

    definition = definition_of(validate_spec(BASE))
    record = render_record(Owner("llm", "ns", "uid"), definition, 3)
    assert record["kind"] == "ControllerRevision" and record["revision"] == 3
    assert record["metadata"]["labels"]["localattn.dev/revision"] == definition.revision
    parsed = parse_record(record)
    assert parsed is not None and parsed.definition == definition and parsed.number == 3
    tampered = copy.deepcopy(record)
    tampered["data"]["podTemplate"]["spec"]["containers"][0]["image"] = "evil"
    assert parse_record(tampered).definition is None  # type: ignore[union-attr]  # never rendered
    records = [Record(f"r{i}", f"rev{i}", i, None) for i in range(1, 8)]
    assert [r.revision for r in records_to_prune(records, 3, {"rev2"})] == ["rev1", "rev3", "rev4"]
