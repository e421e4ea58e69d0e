"""Generate the CustomResourceDefinition from the pydantic models (never hand-edit crds/).

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 subset: every node typed,
no `$ref`, `anyOf` only without types, `nullable` instead of `null` types, boolean `exclusiveMinimum`.

Two variants from the same models: `crds/localattndeployment.yaml` for every supported release (1.20 on), and
`crds/localattndeployment-cel.yaml`, the same plus the models' CEL rules (`x-kubernetes-validations`) for
Kubernetes >= 1.25. One file cannot serve both: 1.20 refuses the unknown schema field (kubectl's validation and
server-side apply both fail; only a client-side apply without validation would silently drop it), so
`localattn crd apply` picks the variant from the server's version.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from localattn_operator import models

_DROP_KEYS = {"title", "examples", "discriminator"}
CEL_MIN_MINOR = 25  # x-kubernetes-validations: beta and on by default since 1.25 (GA in 1.29)


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
    return {k: _to_structural(v) if k not in ("enum", models.CEL_KEY) else v for k, v in node.items()}


def _is_int_or_string(variants: list[dict[str, Any]]) -> bool:
    return sorted(v.get("type", "") for v in variants) == ["integer", "string"]


def spec_schema(cel: bool = False) -> dict[str, Any]:
    """Structural schema of `.spec` and `.status` as one object schema; `cel`: with the models' CEL rules."""
    raw = models.LocalAttnDeployment.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve_refs(raw, raw.get("$defs", {}))
    schema: dict[str, Any] = _to_structural(resolved)
    schema.pop("additionalProperties", None)
    schema["properties"]["status"] = _without_defaults(schema["properties"]["status"])
    return schema if cel else _without_key(schema, models.CEL_KEY)


def _without_key(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _without_key(v, key) for k, v in node.items() if k != key}
    if isinstance(node, list):
        return [_without_key(v, key) for v in node]
    return node


def cel_rules(cel_schema: dict[str, Any] | None = None) -> list[tuple[str, dict[str, str]]]:
    """Every CEL rule of the schema with the path of the node it sits on (`spec.rollout.steps[]`)."""
    found: list[tuple[str, dict[str, str]]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        found.extend((path, rule) for rule in node.get(models.CEL_KEY, []))
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}" if path else name)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(cel_schema if cel_schema is not None else spec_schema(cel=True), "")
    return found


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in, as the apiserver does before validation: a missing field
    with a default gets it (and then its own nested defaults); only objects that exist are descended into."""
    if isinstance(value, dict) and schema.get("properties"):
        out = dict(value)
        for name, prop in schema["properties"].items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = with_defaults(prop, out[name])
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: with_defaults(schema["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], v) for v in value]
    return value


def wants_cel(server_version: dict[str, Any]) -> bool:
    """Whether a server (its `/version` answer) enforces `x-kubernetes-validations`. Vendors decorate the
    minor ("27+" on GKE/EKS); a version that cannot be read gets the variant every release accepts."""
    digits = "".join(ch for ch in str(server_version.get("minor", "")) if ch.isdigit())
    try:
        major, minor = int(str(server_version.get("major", "")).rstrip("+")), int(digits)
    except ValueError:
        return False
    return major > 1 or (major == 1 and minor >= CEL_MIN_MINOR)


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


def build_crd(cel: bool = False) -> dict[str, Any]:
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
                    "schema": {"openAPIV3Schema": spec_schema(cel)},
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


def render_yaml(cel: bool = False) -> str:
    header = "# Generated by `localattn crd generate` from operator/localattn_operator/models.py. Do not edit.\n"
    if cel:
        header += ("# For Kubernetes >= 1.25: the same CRD plus the cross-field CEL rules (x-kubernetes-validations);\n"
                   "# 1.20-1.24 refuse it: use localattndeployment.yaml there (`localattn crd apply` picks the right one).\n")
    return header + yaml.safe_dump(build_crd(cel), sort_keys=False, width=100)
