"""Per-target replica recommendations from vLLM's own load signals (pure: samples in, numbers out).

Each target follows the HorizontalPodAutoscaler's ratio rule, `desired = ceil(current * value / target)`
with a 10 % tolerance, written as demand over per-replica capacity (`ceil(sum / target)` for an additive
signal), which is the same number whenever every replica reports and stays right when the samples come from
more or fewer pods than the managed count (pods still starting, a rollout's surge arm).

Missing data is never zero load. A target whose every sample is missing has no recommendation (the decision
holds); a target with some replicas missing may scale *up* counting them as idle (the HPA's conservative
choice) but never scales down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from localattn_operator import queries
from localattn_operator.models import AutoscalingTargets

TOLERANCE = 0.1  # the HPA's --horizontal-pod-autoscaler-tolerance default
# A nearly empty cache measured from one short sequence would claim an absurd headroom; vLLM's default
# max_num_seqs is 256 (1024 on some GPUs), so anything beyond this bound says only "plenty".
MAX_HEADROOM = 4096.0

# Signal names: the spec.autoscaling.targets field names, used in events, status and metric labels.
WAITING = "waitingRequestsPerReplica"
KV_CACHE = "kvCacheUsage"
P95_LATENCY = "p95LatencySeconds"
P95_TTFT = "p95TTFTSeconds"
SIGNALS = (WAITING, KV_CACHE, P95_LATENCY, P95_TTFT)


@dataclass(frozen=True)
class ReplicaSample:
    """One ready serving pod's scrape of vLLM's gauges; None = the series was missing for that pod."""

    waiting: float | None = None  # vllm:num_requests_waiting
    running: float | None = None  # vllm:num_requests_running
    kv_usage: float | None = None  # vllm:kv_cache_usage_perc, a fraction 0..1


@dataclass(frozen=True)
class Samples:
    """What the metrics provider read for one decision: per ready pod (both rollout arms), and the LAD-wide
    p95s (a percentile of the pooled histogram; per-pod percentiles cannot be averaged)."""

    replicas: tuple[ReplicaSample, ...] = ()
    p95_latency_seconds: float | None = None
    p95_ttft_seconds: float | None = None


@dataclass(frozen=True)
class TargetRecommendation:
    signal: str
    target: float
    value: float | None  # the measured value in the target's unit (None: no data)
    replicas: int | None  # None: no data, this target holds
    partial: bool = False  # some replicas had no sample: may scale up, never down
    note: str = ""


# No recommendation goes beyond this: maxReplicas (<= 1000) clamps it anyway; it keeps ceil() finite.
_MAX_RECOMMENDATION = 1_000_000


def _ceil(value: float) -> int:
    """ceil() that tolerates float noise (8.000000001 -> 8) and absurd inputs (a huge ratio stays finite)."""
    return math.ceil(min(value, _MAX_RECOMMENDATION) - 1e-9)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _directional(current: int, ratio: float, proposal: int) -> int:
    """Tolerance, and a proposal that moves against its own signal holds instead: high load measured on the
    two pods that are ready of four wanted must not read as "two are enough"."""
    if abs(ratio - 1.0) <= TOLERANCE:
        return current
    return max(current, proposal) if ratio > 1.0 else min(current, proposal)


def _additive(signal: str, target: float, values: Sequence[float | None], current: int,
              unit_note: str = "") -> TargetRecommendation:
    """The ratio rule for a per-replica average of an additive quantity (demand = sum, capacity = target)."""
    present = [v for v in values if v is not None]
    if not present:
        return TargetRecommendation(signal, target, None, None, note="no samples")
    average = sum(present) / len(present)
    ratio = average / target
    if len(present) == len(values):
        replicas = _directional(current, ratio, _ceil(sum(present) / target))
        return TargetRecommendation(signal, target, average, replicas, note=unit_note)
    missing = len(values) - len(present)
    if ratio <= 1.0 + TOLERANCE:
        return TargetRecommendation(signal, target, average, current, partial=True,
                                    note=f"{missing} replica(s) without samples: holding (never scale down blind)")
    pessimistic = sum(present) / (len(values) * target)  # the missing replicas counted as idle
    replicas = current
    if pessimistic > 1.0 + TOLERANCE:
        replicas = max(current, _ceil(sum(present) / target))
    return TargetRecommendation(signal, target, average, replicas, partial=True,
                                note=f"{missing} replica(s) without samples counted as idle")


def per_sequence_kv_cost(samples: Sequence[ReplicaSample]) -> float | None:
    """Fraction of one replica's KV cache a running sequence occupies, measured (pooled over replicas).

    This is where local attention shows: a long sequence's KV is bounded by sinks + window in local layers,
    so its measured cost is a fraction of full attention's on the same prompts, whatever the mix of lengths.
    """
    rows = [(s.kv_usage, s.running) for s in samples
            if _finite(s.kv_usage) is not None and _finite(s.running) is not None]
    used = sum(u for u, r in rows if r and r > 0 and u is not None)
    running = sum(r for _, r in rows if r and r > 0)
    if running <= 0 or used <= 0:
        return None
    return min(1.0, used / running)  # a fractional running average can't make one sequence cost > a cache


def headroom(sample: ReplicaSample) -> float | None:
    """Concurrent sequences this replica's KV cache can still admit at its measured per-sequence cost:
    running * (1 - usage) / usage, bounded to [0, MAX_HEADROOM]; None when unmeasurable (no data, or an idle
    replica whose per-sequence cost nothing has shown yet)."""
    usage, running = _finite(sample.kv_usage), _finite(sample.running)
    if usage is None or running is None or running <= 0 or usage <= 0:
        return None
    if usage >= 1.0:
        return 0.0
    return min(MAX_HEADROOM, running * (1.0 - usage) / usage)


def headroom_per_replica(samples: Sequence[ReplicaSample]) -> float | None:
    values = [h for h in (headroom(s) for s in samples) if h is not None]
    return sum(values) / len(values) if values else None


def kv_recommendation(target: float, samples: Sequence[ReplicaSample], current: int) -> TargetRecommendation:
    """KV cache usage, with waiting requests converted into the KV they will need.

    A request-count rule ("keep N running per replica") encodes full attention's KV cost per sequence, so with
    local attention it scales out while most of the cache is free. Usage alone is capacity-aware but saturates
    at 1.0: a replica with a full cache and a long queue reads as only 1.0/target too busy. So demand per
    replica is `usage + waiting * cost`, with `cost` the measured KV fraction per running sequence (the
    quantity the status reports inverted, as headroom): one replica is enough per `target / cost` sequences.
    With an empty queue this is exactly the HPA's ratio rule on `vllm:kv_cache_usage_perc`.
    """
    cost = per_sequence_kv_cost(samples)
    demands: list[float | None] = []
    for s in samples:
        usage, waiting = _finite(s.kv_usage), _finite(s.waiting)
        if usage is None:
            demands.append(None)
        elif waiting and waiting > 0:
            if cost is None:  # requests wait, nothing runs: the queue's KV need is unknown, do not scale down
                demands.append(None)
            else:
                demands.append(usage + waiting * cost)
        else:
            demands.append(usage)
    note = f"KV per running sequence {cost:.4f} of a replica" if cost is not None else ""
    return _additive(KV_CACHE, target, demands, current, note)


def _ratio_of_whole(signal: str, target: float, value: float | None, current: int) -> TargetRecommendation:
    """A LAD-wide value (a p95): the ratio rule on the current count, as the HPA does for Object metrics."""
    value = _finite(value)
    if value is None:
        return TargetRecommendation(signal, target, None, None, note="no samples")
    ratio = value / target
    return TargetRecommendation(signal, target, value, _directional(current, ratio, _ceil(current * ratio)))


def recommendations(targets: AutoscalingTargets, samples: Samples, current: int) -> list[TargetRecommendation]:
    """One recommendation per configured target, in SIGNALS order."""
    rows = samples.replicas
    out: list[TargetRecommendation] = []
    if targets.waiting_requests_per_replica is not None:
        out.append(_additive(WAITING, targets.waiting_requests_per_replica,
                             [_finite(s.waiting) for s in rows], current))
    if targets.kv_cache_usage is not None:
        out.append(kv_recommendation(targets.kv_cache_usage, rows, current))
    if targets.p95_latency_seconds is not None:
        out.append(_ratio_of_whole(P95_LATENCY, targets.p95_latency_seconds, samples.p95_latency_seconds, current))
    if targets.p95_ttft_seconds is not None:
        out.append(_ratio_of_whole(P95_TTFT, targets.p95_ttft_seconds, samples.p95_ttft_seconds, current))
    return out


# PromQL for the per-arm totals `samples_from_totals` takes: queries.LOAD_TEMPLATES (part of queries.TEMPLATES,
# so both metrics providers answer them); the p95s are queries.TEMPLATES' p95_e2e and p95_ttft.
LOAD_TEMPLATES = queries.LOAD_TEMPLATES


@dataclass(frozen=True)
class ArmTotals:
    """One rollout arm's load as a metrics provider answers it (sums over its pods; None = no data)."""

    ready_pods: int
    pods_reporting: float | None
    waiting_total: float | None
    running_total: float | None
    kv_usage_total: float | None
    p95_latency_seconds: float | None = None
    p95_ttft_seconds: float | None = None


def samples_from_totals(arms: Sequence[ArmTotals]) -> Samples:
    """Samples for decide() from per-arm sums (Prometheus): each reporting pod gets its arm's average, the
    ready pods that report nothing are missing. The rules above use sums, so decisions are the same as with
    per-pod samples; only headroom becomes the headroom at the arm's average. A LAD-wide p95 is the worse
    arm's (percentiles of two arms do not combine; the slower arm is the one that needs the capacity)."""
    rows: list[ReplicaSample] = []
    for arm in arms:
        reporting = int(min(arm.ready_pods, max(0.0, _finite(arm.pods_reporting) or 0.0)))

        def average(total: float | None, n: int = reporting) -> float | None:
            value = _finite(total)
            return None if value is None or n <= 0 else value / n

        row = ReplicaSample(waiting=average(arm.waiting_total), running=average(arm.running_total),
                            kv_usage=average(arm.kv_usage_total))
        rows += [row] * reporting + [ReplicaSample()] * (arm.ready_pods - reporting)

    def worst(values: list[float | None]) -> float | None:
        present = [v for v in (_finite(x) for x in values) if v is not None]
        return max(present) if present else None

    return Samples(tuple(rows), worst([a.p95_latency_seconds for a in arms]), worst([a.p95_ttft_seconds for a in arms]))
