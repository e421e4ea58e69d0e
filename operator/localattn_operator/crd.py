"""Generate the CustomResourceDefinition from the pydantic models (never hand-edit crds/).

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 subset: every node typed,
no `$ref`, `anyOf` only without types, `nullable` instead of `null` types, boolean `exclusiveMinimum`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from localattn_operator import models

_DROP_KEYS = {"title", "examples", "discriminator"}


def _resolve_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve_refs(merged, defs)
        return {k: _resolve_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_resolve_refs(v, defs) for v in node]
    return node


def _to_structural(node: Any) -> Any:
    """Rewrite one resolved JSON-schema node into structural OpenAPI v3.0."""
    if isinstance(node, list):
        return [_to_structural(v) for v in node]
    if not isinstance(node, dict):
        return node
    variants = node.get("anyOf")
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string") or _is_int_or_string(non_null):
            node.pop("anyOf")
            node["x-kubernetes-int-or-string"] = True
        elif len(non_null) == 1:
            # Optional[X] is X: an omitted field is the Kubernetes way to say "unset", and a null is pruned.
            node.pop("anyOf")
            node = {**non_null[0], **node}  # keep the outer keys (description, default) over the variant's
        else:
            raise ValueError(f"cannot express anyOf with several typed variants in a CRD: {variants}")
    node = {k: v for k, v in node.items() if k not in _DROP_KEYS}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if node.get("default") is None and "default" in node:
        node.pop("default")  # a null default is not allowed in a structural schema
    if node.get("type") == "object" and node.get("additionalProperties") is False:
        node.pop("additionalProperties")  # pruning already drops unknown fields
    if node.get("type") == "object" and "properties" in node:
        required = set(node.get("required", []))
        for name, prop in node["properties"].items():
            # Server-side defaulting descends only into objects that exist: default nested structs to {}
            # so `kubectl get -o yaml` shows the effective values. Maps (additionalProperties) stay unset.
            if name not in required and "properties" in prop and "default" not in prop:
                prop["default"] = {}
    return {k: _to_structural(v) if k != "enum" else v for k, v in node.items()}


def _is_int_or_string(variants: list[dict[str, Any]]) -> bool:
    return sorted(v.get("type", "") for v in variants) == ["integer", "string"]


def spec_schema() -> dict[str, Any]:
    """Structural schema of `.spec` and `.status` as one object schema."""
    raw = models.LocalAttnDeployment.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve_refs(raw, raw.get("$defs", {}))
    schema: dict[str, Any] = _to_structural(resolved)
    schema.pop("additionalProperties", None)
    schema["properties"]["status"] = _without_defaults(schema["properties"]["status"])
    return schema


def _without_defaults(node: Any) -> Any:
    """Status is written by the operator only: server-side defaults there would just fight its patches."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {"name": "Revision", "type": "string", "jsonPath": ".status.currentRevision"},
    {"name": "Canary", "type": "integer", "jsonPath": ".status.canaryWeight", "description": "Canary weight %"},
    {"name": "P95", "type": "number", "jsonPath": ".status.p95LatencySeconds", "description": "p95 latency (s)"},
    {"name": "Quality", "type": "number", "jsonPath": ".status.quality", "description": "Probe quality score"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/name": "localattn", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": models.SHORT_NAMES,
                "categories": ["all", "localattn"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": spec_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": _PRINTER_COLUMNS,
                }
            ],
        },
    }


def render_yaml() -> str:
    header = "# Generated by `localattn crd generate` from operator/localattn_operator/models.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
