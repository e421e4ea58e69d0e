"""Properties of the autoscaler over arbitrary specs and metric series (hypothesis)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from localattn_operator.autoscaling import AutoscalerState, ReplicaCounts, decide
from localattn_operator.autoscaling_signals import ReplicaSample, Samples
from localattn_operator.models import AutoscalingSpec

T0 = datetime(2026, 12, 1, tzinfo=UTC)
maybe = lambda s: st.none() | s  # noqa: E731
gauge = st.floats(min_value=0, max_value=500) | st.just(float("nan")) | st.just(float("inf"))
fraction = st.floats(min_value=0, max_value=1)


@st.composite
def specs(draw: st.DrawFn) -> AutoscalingSpec:
    low = draw(st.integers(1, 10))
    targets = draw(st.fixed_dictionaries({}, optional={
        "waitingRequestsPerReplica": st.floats(0.1, 50),
        "kvCacheUsage": st.floats(0.05, 1),
        "p95LatencySeconds": st.floats(0.05, 60),
        "p95TTFTSeconds": st.floats(0.05, 60),
    }).filter(bool))
    return AutoscalingSpec.model_validate({
        "minReplicas": low, "maxReplicas": draw(st.integers(low, 40)), "targets": targets,
        "scaleUp": {"stabilizationWindowSeconds": draw(st.sampled_from([0, 30, 120])),
                    "maxIncreasePercent": draw(st.integers(1, 300)), "maxIncreasePods": draw(st.integers(1, 8))},
        "scaleDown": {"stabilizationWindowSeconds": draw(st.sampled_from([0, 60, 300])),
                      "delaySeconds": draw(st.sampled_from([0, 60, 120]))},
    })


replica = st.builds(ReplicaSample, waiting=maybe(gauge), running=maybe(gauge), kv_usage=maybe(fraction))
samples = st.builds(Samples, replicas=st.lists(replica, max_size=12).map(tuple),
                    p95_latency_seconds=maybe(gauge), p95_ttft_seconds=maybe(gauge))
steps = st.lists(st.tuples(samples, st.integers(1, 120), st.integers(0, 3)), min_size=1, max_size=25)


def _gone(value: float | None) -> bool:
    return value is None or not math.isfinite(value)  # NaN (an empty rate window) and Inf are no data


def _has_missing(spec: AutoscalingSpec, s: Samples) -> bool:
    """Some configured signal lacks data: a whole-LAD value, or a replica's per-pod sample."""
    t = spec.targets
    if t.p95_latency_seconds is not None and _gone(s.p95_latency_seconds):
        return True
    if t.p95_ttft_seconds is not None and _gone(s.p95_ttft_seconds):
        return True
    if t.waiting_requests_per_replica is not None and (not s.replicas or any(_gone(r.waiting) for r in s.replicas)):
        return True
    return t.kv_cache_usage is not None and (not s.replicas or any(_gone(r.kv_usage) for r in s.replicas))


@settings(max_examples=300, deadline=None)
@given(spec=specs(), start=st.integers(0, 60), series=steps)
def test_never_outside_bounds_and_missing_data_never_scales_down(
    spec: AutoscalingSpec, start: int, series: list[tuple[Samples, int, int]]
) -> None:
    state, current, now = AutoscalerState(), start, T0
    for i, (sample, gap, stuck) in enumerate(series):
        now += timedelta(seconds=gap)
        pending = min(stuck, current)
        d = decide(spec, state, sample, ReplicaCounts(current=current, ready=current - pending,
                                                      pending_no_gpu=pending), now)
        assert spec.min_replicas <= d.desired <= spec.max_replicas
        if i > 0 and _has_missing(spec, sample):  # (the first decision may move an out-of-bounds start)
            assert d.desired >= current, (d.reason, sample)
        if pending and d.desired > max(current, spec.min_replicas):
            raise AssertionError(f"asked for more while {pending} pods wait for GPUs: {d.reason}")
        assert (d.direction == "hold") == (d.desired == current) and bool(d.events) >= (d.direction != "hold")
        state, current = d.state, d.desired


@settings(max_examples=200, deadline=None)
@given(spec=specs(), current=st.integers(1, 40), n=st.integers(0, 12))
def test_no_data_at_all_holds(spec: AutoscalingSpec, current: int, n: int) -> None:
    empty = Samples(tuple(ReplicaSample() for _ in range(n)))
    d = decide(spec, AutoscalerState(), empty, ReplicaCounts(current=current, ready=n), T0)
    assert d.desired == max(spec.min_replicas, min(spec.max_replicas, current))
    assert d.headroom_per_replica is None
