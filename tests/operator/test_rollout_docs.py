"""docs/rollout.md is the guide users read: its PromQL table is the code's `queries.TEMPLATES`, and its
settings table names every field of the rollout-related spec (pure: the Markdown and the pydantic schema)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from localattn_operator import queries
from localattn_operator.models import LocalAttnDeploymentSpec

DOC = (Path(__file__).resolve().parents[2] / "docs" / "rollout.md").read_text()
_ROW = re.compile(r"^\| `(\w+)` \| `([^`]+)`", re.M)


def _section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n## ", start + len(title))
    return DOC[start:] if end < 0 else DOC[start:end]


def test_the_promql_table_is_the_templates_text() -> None:
    rows = dict(_ROW.findall(_section("### The PromQL (`queries.TEMPLATES`)")))
    documented = set(queries.TEMPLATES) - set(getattr(queries, "LOAD_TEMPLATES", {}))
    assert set(rows) == documented, f"missing {sorted(documented - set(rows))}, unknown {sorted(set(rows) - documented)}"
    for name, text in rows.items():
        assert text == queries.TEMPLATES[name], f"docs/rollout.md's {name} differs from queries.TEMPLATES"


def _field_paths(schema: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            return sorted({p for sub in schema[key] if sub.get("type") != "null"
                           for p in _field_paths(sub, defs, path)})
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return _field_paths(schema["items"], defs, path + "[]")
    props = schema.get("properties")
    if not props:
        return [path]
    return [p for name, sub in props.items() for p in _field_paths(sub, defs, f"{path}.{name}")]


def test_every_rollout_analysis_cost_probe_and_paired_field_is_in_the_settings_table() -> None:
    schema = LocalAttnDeploymentSpec.model_json_schema(by_alias=True)
    paths = {p for top in ("rollout", "analysis", "cost", "probe", "pairedComparison")
             for p in _field_paths(schema["properties"][top], schema.get("$defs", {}), top)}
    assert "analysis.thresholds.maxErrorRate" in paths and "rollout.steps[].setWeight" in paths
    table = _section("## Every setting")
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    assert paths - listed == set(), f"document these in docs/rollout.md 'Every setting': {sorted(paths - listed)}"
    assert listed - paths == set(), f"no such field (renamed?): {sorted(listed - paths)}"
