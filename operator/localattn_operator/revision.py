"""Revisions: the id of what runs, and the cluster's record of each revision (pure).

The id is the hash of the *rendered* definition (`render.definition_of`: the identity-free pod template and the
runtime configuration, as canonical JSON), not of the spec: a renderer change is a new revision (a rollout,
never "changed by hand"), while an added API field whose default renders the same pods changes nothing.
Replicas and the rollout/analysis/cost/paired settings do not reach the rendering, so they never make one.

Each revision's definition is kept in the cluster as an `apps/v1` `ControllerRevision` owned by the LAD (as
StatefulSets and DaemonSets keep theirs), numbered in creation order and pruned to a history limit: the
stable arm is always rendered from its record, so it can be rebuilt while the spec describes a canary, or
nothing at all because it is invalid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from localattn_operator.models import LocalAttnDeploymentSpec
from localattn_operator.render import (
    LABEL_NAME,
    LABEL_REVISION,
    MANAGED_BY,
    Owner,
    RevisionDefinition,
    _metadata,
    definition_of,
    revision_hash,
)

DEFAULT_HISTORY_LIMIT = 10


def revision_of(spec: LocalAttnDeploymentSpec) -> str:
    return definition_of(spec).revision


def record_name(owner_name: str, revision: str) -> str:
    return f"{owner_name}-{revision}"


def record_selector(owner_name: str) -> str:
    return f"{LABEL_NAME}={owner_name},app.kubernetes.io/managed-by={MANAGED_BY}"


def render_record(owner: Owner, definition: RevisionDefinition, number: int) -> dict[str, Any]:
    """The ControllerRevision of one revision (its `data` is immutable once created, as the apiserver enforces)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": _metadata(owner, record_name(owner.name, definition.revision), definition.revision),
        "data": {"podTemplate": definition.pod_template, "runtimeConfig": definition.runtime_data},
        "revision": number,
    }


@dataclass(frozen=True)
class Record:
    """A revision record as read back: its object name, creation number and definition (None: unreadable)."""

    name: str
    revision: str
    number: int
    definition: RevisionDefinition | None


def parse_record(obj: dict[str, Any]) -> Record | None:
    """A ControllerRevision of ours, or None when it is not one. A record whose content no longer hashes to its
    revision label (edited by hand) is kept out of use (definition None): rendering it would run something else."""
    meta = obj.get("metadata") or {}
    revision = (meta.get("labels") or {}).get(LABEL_REVISION)
    if not revision:
        return None
    data = obj.get("data") or {}
    template, runtime = data.get("podTemplate"), data.get("runtimeConfig")
    definition = None
    readable = isinstance(template, dict) and isinstance(runtime, dict) and all(isinstance(v, str) for v in runtime.values())
    if readable and revision_hash(template, runtime) == revision:  # type: ignore[arg-type]
        definition = RevisionDefinition(revision, template, dict(runtime))  # type: ignore[arg-type]
    return Record(str(meta.get("name", "")), revision, int(obj.get("revision") or 0), definition)


def next_number(records: Iterable[Record]) -> int:
    return max((r.number for r in records), default=0) + 1


def records_to_prune(records: Iterable[Record], limit: int, protected: set[str]) -> list[Record]:
    """Records beyond the `limit` newest ones (by creation number), except the `protected` revisions (what runs,
    and the rollback target), oldest first."""
    ordered = sorted(records, key=lambda r: r.number, reverse=True)
    return sorted((r for r in ordered[limit:] if r.revision not in protected), key=lambda r: r.number)


def history_limit(spec: LocalAttnDeploymentSpec | None) -> int:
    if spec is not None and spec.rollout is not None:
        return spec.rollout.revision_history_limit
    return DEFAULT_HISTORY_LIMIT
