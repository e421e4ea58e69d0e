"""What `make demo` shows and records, computed from what it observed (pure: no cluster, no clock, no HTTP).

The demo polls the LAD, its pods and Prometheus; each poll becomes a `Sample` (one `ArmSample` per revision
that has pods, plus the rollout state when the operator writes `status.rollout`). This module turns those
into the live terminal block, the decisions worth a line, and the side-by-side summary of the revisions.
Per-arm figures are `localattn_operator.analysis.Figures`, collected with the operator's own PromQL
(`metrics_provider.collect_arm`), so the demo shows exactly what the analysis judges.

Per length bucket: the runtime does not export a latency histogram by prompt length yet, so per-bucket
latency comes from the load client's own per-request results (`vllm bench serve --save-detailed`) of a load
segment during which a single revision served every request (`bucket_figures`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from localattn_operator import queries
from localattn_operator.analysis import Figures
from localattn_operator.duration import parse_time

ROLLOUT_DONE = ("Promoted", "RolledBack", "Aborted", "Idle")


@dataclass(frozen=True)
class ArmSample:
    """One revision's pods and figures at one poll."""

    revision: str
    track: str  # the pods' localattn.dev/track label ("" without the progressive-delivery wiring)
    ready: int
    pods: int
    share: float  # % of all ready serving pods: the traffic share behind the one Service (replicas router)
    figures: Figures = field(default_factory=Figures)


@dataclass(frozen=True)
class RolloutView:
    """The part of status.rollout the demo shows."""

    phase: str
    step_index: int
    steps: int
    desired_weight: int
    achieved_weight: int
    stable_revision: str | None
    canary_revision: str | None
    message: str = ""
    last_analysis: str | None = None  # phase of the last measurement
    failed_gates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the demo started
    arms: tuple[ArmSample, ...]
    rollout: RolloutView | None = None
    lad_phase: str = ""


@dataclass(frozen=True)
class Decision:
    t: float
    text: str


# --- observing ---------------------------------------------------------------------------------------------


def _is_ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_groups(pods: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int, str]]:
    """revision -> (ready pods, pods, track) over the LAD's pods (terminating ones count, not as ready)."""
    groups: dict[str, tuple[int, int, str]] = {}
    for pod in pods:
        labels = pod.get("metadata", {}).get("labels") or {}
        revision = labels.get("localattn.dev/revision", "")
        if not revision:
            continue
        ready, total, track = groups.get(revision, (0, 0, ""))
        groups[revision] = (ready + _is_ready(pod), total + 1, labels.get("localattn.dev/track", "") or track)
    return groups


def arm_samples(groups: Mapping[str, tuple[int, int, str]], figures: Mapping[str, Figures]) -> tuple[ArmSample, ...]:
    """One ArmSample per revision with pods; traffic share = its ready pods over all ready pods."""
    all_ready = sum(ready for ready, _, _ in groups.values())
    return tuple(
        ArmSample(revision=rev, track=track, ready=ready, pods=total,
                  share=100.0 * ready / all_ready if all_ready else 0.0, figures=figures.get(rev, Figures()))
        for rev, (ready, total, track) in sorted(groups.items(), key=lambda kv: (kv[1][2] != "stable", kv[0]))
    )  # fmt: skip


def rollout_view(lad: Mapping[str, Any]) -> RolloutView | None:
    """status.rollout as the demo shows it; None while the operator writes none (no progressive delivery)."""
    rollout = (lad.get("status") or {}).get("rollout")
    if not isinstance(rollout, dict) or not rollout.get("phase"):
        return None
    steps = ((lad.get("spec") or {}).get("rollout") or {}).get("steps")
    last = rollout.get("lastAnalysis") or {}
    failed = tuple(
        f"{g.get('gate')}[{g.get('bucket', 'all')}]" for g in last.get("gates") or [] if g.get("phase") == "Failed"
    )
    phase = last.get("phase")
    if phase == "Inconclusive" and any(g.get("phase") == "Error" for g in last.get("gates") or []):
        phase = "Inconclusive (provider error)"  # the metrics source did not answer: held, not the canary's fault
    return RolloutView(
        phase=str(rollout["phase"]), step_index=int(rollout.get("stepIndex") or 0),
        steps=len(steps) if isinstance(steps, list) else 3,
        desired_weight=int(rollout.get("desiredWeight") or 0), achieved_weight=int(rollout.get("achievedWeight") or 0),
        stable_revision=rollout.get("stableRevision"), canary_revision=rollout.get("canaryRevision"),
        message=str(rollout.get("message") or ""), last_analysis=phase, failed_gates=failed,
    )  # fmt: skip


def lad_phase(lad: Mapping[str, Any]) -> str:
    status = lad.get("status") or {}
    return f"{status.get('phase') or '-'} {status.get('ready') or ''}".strip()


def history_decisions(lad: Mapping[str, Any], started: datetime, seen: int = 0) -> list[Decision]:
    """status.rollout.history entries after the first `seen`, as Decisions timed from the demo's start."""
    history = ((lad.get("status") or {}).get("rollout") or {}).get("history") or []
    out = []
    for entry in history[seen:]:
        at = parse_time(str(entry.get("time", "")))
        t = (at - started).total_seconds() if at is not None else math.nan
        text = f"{entry.get('from')} -> {entry.get('to')}: {entry.get('reason')}"
        if entry.get("message"):
            text += f" ({entry['message']})"
        out.append(Decision(t, text))
    return out


# --- describing ------------------------------------------------------------------------------------------


def describe_attention(spec: Mapping[str, Any]) -> str:
    """A revision's attention in a few words, from its LAD spec: `full attention` or `W=64 S=4 global [0]`."""
    local = spec.get("localAttention") or {}
    if not local.get("enabled", True):
        return "full attention"
    rule = local.get("globalLayers") or {}
    if rule.get("indices"):
        layers = f"global {list(rule['indices'])}"
    elif rule.get("every"):
        layers = f"global every {rule['every']}"
    else:
        layers = "no global layer"
    return f"W={local.get('windowSize', 1024)} S={local.get('sinkTokens', 4)} {layers}"


def _num(value: float | None, unit: str = "", digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}{unit}"


def _clock(t: float) -> str:
    return f"{int(t) // 60:d}:{int(t) % 60:02d}" if t == t else "?:??"


def format_sample(sample: Sample, names: Mapping[str, str], currency: str = "USD") -> str:
    """The live block: the rollout state, then one row per revision."""
    head = f"[{_clock(sample.t)}] LAD {sample.lad_phase}"
    r = sample.rollout
    if r is not None and r.canary_revision:
        head += (f" | rollout {r.phase} step {min(r.step_index + 1, r.steps)}/{r.steps}"
                 f" weight {r.desired_weight}% (achieved {r.achieved_weight}%)")
    elif r is not None:
        head += f" | rollout {r.phase}"
    if r is not None and r.last_analysis:
        head += f" | last analysis {r.last_analysis}"
        if r.failed_gates:
            head += f" ({', '.join(r.failed_gates)})"
    if r is None:
        head += " | no status.rollout: traffic follows the ready pods"
    cols = f"  {'arm':<7}{'revision':<12}{'attention':<24}{'pods':>5}{'traffic':>8}{'p95 e2e':>9}{'p95 TTFT':>9}" \
           f"{'tok/GPU-s':>10}{f'{currency}/1M':>8}{'ppl':>7}{'EM':>6}"
    lines = [head, cols]
    for arm in sample.arms:
        f = arm.figures
        role = arm.track or ("stable" if r is not None and arm.revision == r.stable_revision else "")
        if r is not None and arm.revision == r.canary_revision:
            role = "canary"
        lines.append(
            f"  {role or '-':<7}{arm.revision[:10]:<12}{names.get(arm.revision, '?')[:23]:<24}"
            f"{f'{arm.ready}/{arm.pods}':>5}{arm.share:>7.0f}%{_num(f.p95_e2e, 's'):>9}{_num(f.p95_ttft, 's'):>9}"
            f"{_num(f.tokens_per_gpu_second):>10}{_num(f.cost_per_million):>8}{_num(f.probe_perplexity):>7}"
            f"{_num(f.probe_exact_match, digits=2):>6}"
        )
    if not sample.arms:
        lines.append("  (no serving pods yet)")
    return "\n".join(lines)


def changed(a: Sample | None, b: Sample) -> bool:
    """Worth a new line when not redrawing in place: pods, readiness or rollout step/phase moved."""
    if a is None:
        return True
    key = lambda s: ([(x.revision, x.ready, x.pods) for x in s.arms], s.lad_phase,  # noqa: E731
                     None if s.rollout is None else (s.rollout.phase, s.rollout.step_index, s.rollout.achieved_weight))
    return key(a) != key(b)


# --- per length bucket, from the load client's own results ------------------------------------------------


@dataclass(frozen=True)
class BucketLoad:
    bucket: str
    requests: int
    p95_e2e: float | None  # seconds
    p95_ttft: float | None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; None for no values."""
    xs = sorted(v for v in values if v == v)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bucket_figures(result: Mapping[str, Any], boundaries: Sequence[int]) -> list[BucketLoad]:
    """Per prompt-length bucket (lo <= tokens < hi, the operator's bucket labels): count, p95 E2E and TTFT of
    the successful requests of one `vllm bench serve --save-detailed` result."""
    labels = queries.bucket_labels(boundaries)
    lens = result.get("input_lens") or []
    latencies = result.get("latencies") or []
    ttfts = result.get("ttfts") or []
    errors = result.get("errors") or [""] * len(lens)
    by_bucket: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in labels}
    for i, n in enumerate(lens):
        if i < len(errors) and errors[i]:
            continue
        label = queries.bucket_of(int(n), boundaries)
        if i < len(latencies) and latencies[i]:
            by_bucket[label][0].append(float(latencies[i]))
        if i < len(ttfts) and ttfts[i]:
            by_bucket[label][1].append(float(ttfts[i]))
    return [BucketLoad(label, len(e2e), percentile(e2e, 95), percentile(ttft, 95))
            for label, (e2e, ttft) in by_bucket.items()]


# --- the summary ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevisionSummary:
    revision: str
    name: str  # describe_attention
    outcome: str  # baseline / promoted / rolled back / ...
    served_seconds: float
    figures: Figures
    buckets: tuple[BucketLoad, ...] = ()


def summary_markdown(revisions: Sequence[RevisionSummary], currency: str = "USD") -> str:
    """The revisions side by side (Markdown, readable in a terminal too)."""
    if not revisions:
        return "(no revision served)"
    head = "| | " + " | ".join(f"{r.name} (`{r.revision}`)" for r in revisions) + " |"
    lines = [head, "|---" * (len(revisions) + 1) + "|"]

    def row(label: str, cells: Iterable[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    figs = [r.figures for r in revisions]
    row("outcome", (r.outcome for r in revisions))
    row("served (s, with ready pods under load)", (f"{r.served_seconds:.0f}" for r in revisions))
    row("requests (Prometheus)", (_num(f.requests, digits=4) for f in figs))
    row("p95 end-to-end latency", (_num(f.p95_e2e, " s") for f in figs))
    row("p95 time to first token", (_num(f.p95_ttft, " s") for f in figs))
    row("p95 inter-token latency", (_num(f.p95_itl, " s") for f in figs))
    row("error rate", (_num(f.error_rate) for f in figs))
    row("generated tokens per GPU-second", (_num(f.tokens_per_gpu_second) for f in figs))
    row(f"cost per 1M generated tokens ({currency})", (_num(f.cost_per_million) for f in figs))
    row("probe perplexity (golden set)", (_num(f.probe_perplexity) for f in figs))
    row("probe exact match", (_num(f.probe_exact_match, digits=2) for f in figs))
    labels = list(dict.fromkeys(b.bucket for r in revisions for b in r.buckets))
    for label in labels:
        cells = []
        for r in revisions:
            b = next((x for x in r.buckets if x.bucket == label), None)
            cells.append("-" if b is None or not b.requests else
                         f"{b.requests} req, p95 e2e {_num(b.p95_e2e, ' s')}, TTFT {_num(b.p95_ttft, ' s')}")
        row(f"prompt tokens {label} (load client)", cells)
    return "\n".join(lines)


def serving_windows(samples: Sequence[Sample]) -> dict[str, tuple[float, float]]:
    """revision -> (first, last) sample time at which it had a ready pod."""
    windows: dict[str, tuple[float, float]] = {}
    for s in samples:
        for arm in s.arms:
            if arm.ready:
                first, _ = windows.get(arm.revision, (s.t, s.t))
                windows[arm.revision] = (first, s.t)
    return windows
