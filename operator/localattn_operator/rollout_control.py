"""Manual rollout control through annotations, as `kubectl argo rollouts` offers it (pure).

Why annotations and not spec fields: they are requests, not desired state. A GitOps tool owns the spec and
would revert a `paused: true` it did not write; an annotation leaves the spec (and `metadata.generation`)
alone. Each request is a value (the `kubectl localattn` plugin writes the current RFC 3339 time); the operator
handles a value once and records it in `status.rollout.acknowledged`, so a restart neither repeats nor loses
a request, and nothing has to remove the annotation:

    kubectl annotate lad NAME --overwrite localattn.dev/promote="$(date -u +%FT%TZ)"

- `localattn.dev/pause`: hold at the current step (analysis keeps running; a failure still rolls back).
- `localattn.dev/resume`: leave a manual pause or a pause step (next step); after a rollback or an abort,
  retry the same revision.
- `localattn.dev/promote`: promote now, skipping the remaining steps and analyses.
- `localattn.dev/abort`: all traffic to stable, the canary removed; phase Aborted until the spec changes
  (or resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from localattn_operator.duration import parse_time
from localattn_operator.models import ManualAcknowledged

Verb = Literal["abort", "pause", "resume", "promote"]
VERBS: tuple[Verb, ...] = ("abort", "pause", "resume", "promote")
PREFIX = "localattn.dev/"


def annotation(verb: Verb) -> str:
    return PREFIX + verb


@dataclass(frozen=True)
class ManualRequest:
    verb: Verb
    value: str


def pending_requests(annotations: Mapping[str, str], acknowledged: ManualAcknowledged) -> list[ManualRequest]:
    """Requests not yet acted on, oldest first: by their time value when every one is a time, else in the
    fixed order abort, pause, resume, promote (the safe one first)."""
    new = [ManualRequest(verb, value) for verb in VERBS
           if (value := (annotations.get(annotation(verb)) or "").strip()) and value != getattr(acknowledged, verb)]
    times = [parse_time(r.value) for r in new]
    if new and all(t is not None for t in times):
        order = sorted(zip(times, range(len(new)), new, strict=True), key=lambda x: (x[0], x[1]))
        return [r for _, _, r in order]
    return new
