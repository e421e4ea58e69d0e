"""The committed CRD is exactly what the models generate, and it is a structural schema."""

from pathlib import Path
from typing import Any

import yaml

from localattn_operator import crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_generated() -> None:
    committed = (ROOT / "crds" / "localattndeployment.yaml").read_text()
    assert committed == crd.render_yaml(), "crds/ is stale: run `localattn crd generate --out crds/localattndeployment.yaml`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key in ("properties",):
            for name, child in node.get(key, {}).items():
                out += _walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"untyped node at {path}"
        if "exclusiveMinimum" in node:
            assert isinstance(node["exclusiveMinimum"], bool), path
    assert schema["required"] == ["spec"]
    assert schema["properties"]["spec"]["required"] == ["model"]


def test_names_subresources_and_columns() -> None:
    doc = crd.build_crd()
    assert doc["metadata"]["name"] == "localattndeployments.localattn.dev"
    assert doc["spec"]["names"]["shortNames"] == ["lad"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Age", "Canary", "P95", "Quality"} <= columns


def test_ranges_and_enums_reach_the_schema() -> None:
    spec = crd.spec_schema()["properties"]["spec"]["properties"]
    local = spec["localAttention"]["properties"]
    assert local["windowSize"]["minimum"] == 1
    assert local["sinkTokens"]["minimum"] == 0
    assert spec["replicas"]["minimum"] == 0
    assert spec["runtime"]["properties"]["dtype"]["enum"] == ["auto", "bfloat16", "float16", "float32"]
    util = spec["memory"]["properties"]["gpuMemoryUtilization"]
    assert util["minimum"] == 0 and util["exclusiveMinimum"] is True and util["maximum"] == 1
    limits = spec["runtime"]["properties"]["resources"]["properties"]["limits"]
    assert limits["additionalProperties"] == {"x-kubernetes-int-or-string": True}
    yaml.safe_dump(crd.build_crd())  # serialisable
