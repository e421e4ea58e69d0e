"""docs/crd-reference.md is generated from the CRD's own schema, covers every field, and is never stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localattn_operator import crd, crd_docs

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "crd-reference.md"


def test_committed_reference_matches_generated() -> None:
    assert REFERENCE.read_text() == crd_docs.render_markdown(), (
        "docs/crd-reference.md is stale: run `make crd` (or `localattn crd docs --out docs/crd-reference.md`)"
    )


def _schema_paths(node: dict[str, Any], path: str) -> list[str]:
    """An independent walk of the CRD schema: every path a user can write or read."""
    out = [path]
    for name, child in node.get("properties", {}).items():
        out += _schema_paths(child, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{key}")):
        child = node.get(key)
        if isinstance(child, dict) and "properties" in child:
            out += [p for p in _schema_paths(child, f"{path}{suffix}") if p != f"{path}{suffix}"]
    return out


def test_every_schema_field_has_a_row() -> None:
    schema = crd.spec_schema()
    text = crd_docs.render_markdown()
    documented = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    for top in ("spec", "status"):
        for path in _schema_paths(schema["properties"][top], top):
            assert path in documented, f"{path} is missing from the CRD reference"


def _row(path: str) -> list[str]:
    for line in crd_docs.render_markdown().splitlines():
        if line.startswith(f"| `{path}`"):
            return [cell.strip() for cell in line.strip("|").split(" | ")]
    raise AssertionError(f"no row for {path}")


@pytest.mark.parametrize(
    ("path", "column", "expected"),
    [
        ("spec.model", 0, "*(required)*"),
        ("spec.model.uri", 4, "pvc://claim/path"),
        ("spec.localAttention.windowSize", 2, "`1024`"),
        ("spec.localAttention.windowSize", 3, ">= 1"),
        ("spec.memory.gpuMemoryUtilization", 3, "> 0; <= 1"),
        ("spec.runtime.dtype", 3, 'one of `"auto"`, `"bfloat16"`, `"float16"`, `"float32"`'),
        ("spec.runtime.resources.limits", 1, "`map[string]int-or-string`"),
        ("spec.runtime.resources.limits", 2, '`{"nvidia.com/gpu": 1}` (set by the operator)'),
        ("spec.runtime.env[].name", 0, "*(required)*"),
        ("spec.runtime.tolerations", 1, "`[]object`"),
        ("status.conditions[].type", 3, "one of"),
    ],
)
def test_types_defaults_ranges_and_descriptions(path: str, column: int, expected: str) -> None:
    assert expected in _row(path)[column]


def test_status_rows_carry_no_defaults() -> None:
    """Status has no server-side defaults (crd.py strips them): the reference must not invent any."""
    for line in crd_docs.render_markdown().splitlines():
        if line.startswith("| `status"):
            assert line.split(" | ")[2].strip() == "", line


def test_cel_rules_and_bounds_are_rendered_generically() -> None:
    """Fields added later (with rules, patterns, list bounds) need no change to the generator."""
    node = {
        "type": "object",
        "required": ["steps"],
        "x-kubernetes-validations": [{"rule": "self.a < self.b", "message": "a below b"}],
        "properties": {
            "steps": {"type": "array", "minItems": 1, "maxItems": 10,
                      "items": {"type": "object", "properties": {"weight": {"type": "integer", "minimum": 1}}}},
            "name": {"type": "string", "pattern": "^[a-z]+$", "default": "x"},
        },
    }
    rows = {row.path: row for row in crd_docs.walk(node, "spec.rollout")}
    assert "rule `self.a < self.b` (a below b)" in rows["spec.rollout"].constraints
    assert rows["spec.rollout.steps"].required and rows["spec.rollout.steps"].constraints == "items >= 1; items <= 10"
    assert rows["spec.rollout.steps[].weight"].constraints == ">= 1"
    assert rows["spec.rollout.name"].default == '`"x"`' and "pattern `^[a-z]+$`" in rows["spec.rollout.name"].constraints


def test_cli_writes_the_reference(tmp_path: Path) -> None:
    from localattn_cli.main import main

    out = tmp_path / "ref.md"
    with pytest.raises(SystemExit) as exit_info:
        main(["crd", "docs", "--out", str(out)])
    assert exit_info.value.code == 0
    assert out.read_text() == crd_docs.render_markdown()
