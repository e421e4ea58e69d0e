"""The autoscaler's pure decision over recorded metric series: each test asserts the replica sequence."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localattn_operator.autoscaling import (
    BOUNDS,
    NO_DATA,
    AutoscalerState,
    ReplicaCounts,
    ScaleDecision,
    decide,
    managed_replicas,
    plan,
    replicas_write,
    state_from_status,
    status_of,
    waiting_for_gpus,
)
from localattn_operator.autoscaling_signals import (
    KV_CACHE,
    LOAD_TEMPLATES,
    P95_LATENCY,
    WAITING,
    ArmTotals,
    ReplicaSample,
    Samples,
    headroom,
    samples_from_totals,
)
from localattn_operator.models import AutoscalingSpec, AutoscalingStatus
from localattn_operator.status import PendingPod

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TICK = 15  # seconds between decisions, the HPA's sync period


def autoscaling(targets: dict[str, float] | None = None, **fields: Any) -> AutoscalingSpec:
    return AutoscalingSpec.model_validate(
        {"minReplicas": 1, "maxReplicas": 8, "targets": targets or {"waitingRequestsPerReplica": 2}, **fields}
    )


def waiting(total: float, replicas: int) -> Samples:
    """`total` waiting requests spread evenly over `replicas` ready pods."""
    return Samples(tuple(ReplicaSample(waiting=total / replicas, running=1, kv_usage=0.1) for _ in range(replicas)))


Series = Callable[[int, int], Samples]  # (tick, current replicas) -> what the pods report


def run(spec: AutoscalingSpec, series: Sequence[Series] | Series, ticks: int | None = None, start: int = 1,
        pending: Callable[[int, int], int] = lambda tick, current: 0) -> tuple[list[int], list[ScaleDecision]]:
    """Decide every TICK seconds, feeding each decision's count and state into the next (as the reconciler
    will through status.autoscaling); every ready replica reports."""
    steps = list(series) if isinstance(series, Sequence) else [series] * (ticks or 1)
    state, current, counts, decisions = AutoscalerState(), start, [], []
    for i, sample in enumerate(steps):
        stuck = pending(i, current)
        d = decide(spec, state, sample(i, current - stuck),
                   ReplicaCounts(current=current, ready=current - stuck, pending_no_gpu=stuck), T0 + timedelta(seconds=TICK * i))
        state, current = d.state, d.desired
        counts.append(current)
        decisions.append(d)
    return counts, decisions


def load(total: float) -> Series:
    return lambda tick, ready: waiting(total, max(ready, 1))


def test_step_load_scales_up_at_once_within_the_rate_limit_and_down_after_the_window() -> None:
    # 0 waiting, then 12 waiting requests (target 2 per replica -> 6 replicas) for 5 ticks, then 0 again.
    series = [load(0)] * 2 + [load(12)] * 5 + [load(0)] * 26
    counts, decisions = run(autoscaling(), series)
    # +4 pods per 15 s period (larger than +100% of 1), then the rest next period; hold at 6.
    assert counts[:8] == [1, 1, 5, 6, 6, 6, 6, 6]
    # The last high recommendation was at tick 6 (t=90 s): the 300 s scale-down window keeps 6 until t>390 s.
    down_at = next(i for i, c in enumerate(counts) if i > 6 and c < 6)
    assert down_at == 6 + 300 // TICK and counts[down_at:] == [1] * (len(counts) - down_at)
    up, down = decisions[2], decisions[down_at]
    assert (up.direction, up.signal, up.events[0].reason) == ("up", WAITING, "ScaledUp")
    assert "1 -> 5 replicas: waitingRequestsPerReplica 12" in up.events[0].message
    assert "scale-up limited to 5" in up.reason
    assert (down.direction, down.events[0].reason) == ("down", "ScaledDown")
    assert "scale-down stabilised" in decisions[down_at - 1].reason


def test_a_one_tick_spike_does_not_scale_with_a_scale_up_window() -> None:
    series = [load(2)] * 3 + [load(16)] + [load(2)] * 4
    counts, _ = run(autoscaling(scaleUp={"stabilizationWindowSeconds": 60}), series)
    assert counts == [1] * 8
    # ... while the HPA's default (no scale-up window) follows it and then holds it for the scale-down window.
    counts, _ = run(autoscaling(), series)
    assert counts == [1, 1, 1, 5, 5, 5, 5, 5]


def test_flapping_load_scales_once_and_holds() -> None:
    # Demand alternates between 5 and 3 replicas' worth every tick for ten minutes.
    series = [load(10) if i % 2 else load(6) for i in range(40)]
    counts, decisions = run(autoscaling(), series, start=3)
    assert counts == [3] + [5] * 39
    assert sum(d.direction != "hold" for d in decisions) == 1


def test_tolerance_holds_near_the_target() -> None:
    counts, _ = run(autoscaling(), load(8.7), ticks=4, start=4)  # 1.0875 per target 2 ... ratio 1.09 <= 1.1
    assert counts == [4, 4, 4, 4]
    counts, _ = run(autoscaling(), load(9), ticks=2, start=4)  # ratio 1.125: scale
    assert counts == [5, 5]


def test_missing_data_holds_and_never_reads_as_zero_load() -> None:
    nothing = Samples(tuple(ReplicaSample() for _ in range(4)))
    counts, decisions = run(autoscaling(), lambda tick, ready: nothing, ticks=40, start=4)
    assert counts == [4] * 40
    assert decisions[-1].signal == NO_DATA and "no data" in decisions[-1].reason
    assert decisions[-1].state.recommendations == ()  # holds are not recommendations: they do not pin windows

    # Some pods unscraped and the others idle: hold (idle here may be busy there).
    partial = Samples((ReplicaSample(waiting=0), ReplicaSample(), ReplicaSample(), ReplicaSample(waiting=0)))
    counts, decisions = run(autoscaling(), lambda tick, ready: partial, ticks=30, start=4)
    assert counts == [4] * 30 and "holding" in decisions[0].reason

    # ... but a high load on the pods that report scales up, the silent ones counted as idle.
    busy = Samples((ReplicaSample(waiting=12), ReplicaSample(), ReplicaSample(waiting=12), ReplicaSample()))
    counts, _ = run(autoscaling(), lambda tick, ready: busy, ticks=2, start=4)
    assert counts == [8, 8]  # ceil(24 / 2) = 12, clamped to maxReplicas


def test_a_target_without_data_blocks_scale_down_of_the_others() -> None:
    spec = autoscaling({"waitingRequestsPerReplica": 2, "p95LatencySeconds": 5})
    idle_no_latency = lambda tick, ready: Samples(waiting(0, ready).replicas, p95_latency_seconds=None)  # noqa: E731
    counts, decisions = run(spec, idle_no_latency, ticks=30, start=4)
    assert counts == [4] * 30 and "no data for p95LatencySeconds" in decisions[-1].reason
    idle = lambda tick, ready: Samples(waiting(0, ready).replicas, p95_latency_seconds=1.0)  # noqa: E731
    counts, _ = run(spec, idle, ticks=30, start=4)
    assert counts[-1] == 1


def test_latency_target_uses_the_ratio_on_the_current_count() -> None:
    spec = autoscaling({"p95LatencySeconds": 2})
    slow = lambda tick, ready: Samples(waiting(0, ready).replicas, p95_latency_seconds=3.0)  # noqa: E731
    counts, decisions = run(spec, slow, ticks=3, start=2)
    assert counts == [3, 5, 8]  # ceil(2 * 1.5), ceil(3 * 1.5), ceil(5 * 1.5) = 8 (max)
    assert decisions[0].signal == P95_LATENCY


def test_scale_down_delay_after_a_scale_up() -> None:
    spec = autoscaling(scaleDown={"stabilizationWindowSeconds": 0, "delaySeconds": 60})
    series = [load(8)] + [load(0)] * 6
    counts, decisions = run(spec, series)
    assert counts == [4, 4, 4, 4, 1, 1, 1]  # scaled up at t=0: no scale-down before t=60 s (tick 4)
    assert "scale-down delayed" in decisions[3].reason


def test_bounds_move_the_count_even_without_data() -> None:
    nothing = lambda tick, ready: Samples()  # noqa: E731
    counts, decisions = run(autoscaling(), nothing, ticks=2, start=12)
    assert counts == [8, 8] and decisions[0].signal == BOUNDS
    counts, _ = run(autoscaling(minReplicas=2), nothing, ticks=2, start=0)
    assert counts == [2, 2]


def test_pending_for_lack_of_gpus_stops_asking_for_more() -> None:
    # Only 6 GPUs exist: from 6 replicas on, every extra pod stays Pending (Unschedulable).
    def pending(tick: int, current: int) -> int:
        return max(0, current - 6)

    counts, decisions = run(autoscaling(), load(20), ticks=6, start=4, pending=pending)
    # 4 -> 8 (rate limit +4), 2 of them Pending: the autoscaler does not go to 10 while they wait.
    assert counts == [8, 8, 8, 8, 8, 8]
    assert [d.gpu_limited for d in decisions] == [False, True, True, True, True, True]
    warnings = [e for d in decisions for e in d.events if e.reason == "GPULimited"]
    assert len(warnings) == 1 and "2 replica(s) Pending for lack of GPUs" in warnings[0].message
    # ... and when the load goes away it still scales down (dropping the Pending pods first is the
    # Deployment controller's job).
    counts, _ = run(autoscaling(scaleDown={"stabilizationWindowSeconds": 0, "delaySeconds": 0}),
                    [load(20)] * 2 + [load(0)] * 2, start=4, pending=pending)
    assert counts == [8, 8, 1, 1]


def test_kv_target_counts_local_attentions_smaller_sequences() -> None:
    """Same traffic (8 running + 8 waiting per replica), measured KV per sequence 4x smaller with local attention."""
    spec = autoscaling({"kvCacheUsage": 0.8}, maxReplicas=20, scaleDown={"stabilizationWindowSeconds": 0})

    def arm(usage: float) -> Series:
        return lambda tick, ready: Samples(tuple(
            ReplicaSample(waiting=8, running=8, kv_usage=usage) for _ in range(ready)))

    full, _ = run(spec, arm(0.8), ticks=1, start=4)  # per sequence 0.1: 16 sequences need 1.6 caches
    local, decisions = run(spec, arm(0.2), ticks=1, start=4)  # per sequence 0.025: 0.4 caches
    assert full == [8]  # ceil(4 * 1.6 / 0.8)
    assert local == [2]  # ceil(4 * 0.4 / 0.8): the queue fits in the free KV, fewer replicas
    assert decisions[0].signal == KV_CACHE
    assert decisions[0].headroom_per_replica == pytest.approx(8 * 0.8 / 0.2)
    # Usage alone (the plain HPA rule) reads a saturated full-attention replica as only 1.25x busy.
    saturated, _ = run(spec, lambda tick, ready: Samples(tuple(
        ReplicaSample(waiting=40, running=10, kv_usage=1.0) for _ in range(ready))), ticks=1, start=2)
    assert saturated == [6]  # 2 replicas: 20 running + 80 waiting at 0.1 each = 10 caches -> +4 rate limit


def test_headroom_is_measured_bounded_and_none_without_data() -> None:
    assert headroom(ReplicaSample(running=4, kv_usage=0.25)) == pytest.approx(12)
    assert headroom(ReplicaSample(running=4, kv_usage=1.0)) == 0
    assert headroom(ReplicaSample(running=1, kv_usage=1e-9)) == 4096
    assert headroom(ReplicaSample(running=0, kv_usage=0.0)) is None  # idle: cost per sequence unmeasured
    assert headroom(ReplicaSample(running=None, kv_usage=0.5)) is None
    assert headroom(ReplicaSample(running=2, kv_usage=float("nan"))) is None


def test_during_a_rollout_the_decision_is_the_total_over_both_arms() -> None:
    # 3 stable + 1 canary ready (samples from both arms), total 4 managed; load for 6 replicas.
    both_arms = lambda tick, ready: waiting(12, ready)  # noqa: E731
    counts, decisions = run(autoscaling(maxReplicas=6), both_arms, ticks=3, start=4)
    assert counts == [6, 6, 6]
    # A surge arm still starting (5 ready of 6 managed) must not read as "fewer are enough".
    d = decide(autoscaling(maxReplicas=6), decisions[-1].state, waiting(12, 5),
               ReplicaCounts(current=6, ready=5), T0 + timedelta(seconds=60))
    assert d.desired == 6
    # With more samples than the managed count (maxSurge > 0: canary pods on top), demand still decides.
    d = decide(autoscaling(maxReplicas=6), AutoscalerState(), waiting(4, 7), ReplicaCounts(current=6, ready=7), T0)
    assert d.desired == 6  # a first decision counts the current count as recommended (as the HPA does)
    d = decide(autoscaling(maxReplicas=6, scaleDown={"stabilizationWindowSeconds": 0, "delaySeconds": 0}),
               AutoscalerState(), waiting(4, 7), ReplicaCounts(current=6, ready=7), T0)
    assert d.desired == 2  # ceil(4 / 2): the total, whatever the arms' split


def test_status_round_trip_keeps_the_windows_across_a_restart() -> None:
    spec = autoscaling()
    _, decisions = run(spec, [load(12)] * 2 + [load(0)] * 3)
    status = status_of(decisions[-1], None)
    assert status.desired_replicas == 6 and status.last_decision is not None
    assert status.last_decision.to_replicas == 6 and status.last_decision.signal == WAITING
    raw = status.model_dump(by_alias=True, exclude_none=True)
    assert raw["lastDecision"]["from"] == 5 and raw["lastDecision"]["to"] == 6
    restored = state_from_status(AutoscalingStatus.model_validate(raw))
    assert restored == decisions[-1].state  # a restarted operator remembers the windows and the last scale
    # ... so it holds inside the scale-down window and drops only after it, as an uninterrupted one would.
    inside = decide(spec, restored, waiting(0, 6), ReplicaCounts(current=6, ready=6), T0 + timedelta(seconds=300))
    after = decide(spec, restored, waiting(0, 6), ReplicaCounts(current=6, ready=6), T0 + timedelta(seconds=316))
    assert (inside.desired, after.desired) == (6, 1)
    assert status_of(inside, status).last_decision == status.last_decision  # a hold keeps the last change


def test_hand_scale_is_reverted_with_a_warning() -> None:
    spec = autoscaling()
    _, decisions = run(spec, [load(8)])
    status = status_of(decisions[-1], None)  # decided 4
    assert managed_replicas(9, status) == 4  # a hand scale is not an input
    d = decide(spec, state_from_status(status), waiting(8, 4), ReplicaCounts(current=4, ready=4), T0 + timedelta(seconds=15))
    write = replicas_write(9, status, d)  # someone ran `kubectl scale lad --replicas 9`
    assert write.replicas == 4 and [e.reason for e in write.events] == ["ScaleReverted"]
    assert write.events[0].type == "Warning" and "9" in write.events[0].message
    assert replicas_write(4, status, d).replicas is None  # in sync: nothing to write
    # The operator's own change (spec still at the previous decision) is written without a revert event.
    up = decide(spec, state_from_status(status), waiting(12, 4), ReplicaCounts(current=4, ready=4), T0 + timedelta(seconds=30))
    own = replicas_write(4, status, up)
    assert own.replicas == 6 and own.events == ()
    # First decision ever: spec.replicas is where the autoscaler starts.
    assert managed_replicas(3, None) == 3


def test_samples_from_prometheus_totals_decide_like_per_pod_samples() -> None:
    stable = ArmTotals(ready_pods=3, pods_reporting=3, waiting_total=9, running_total=12, kv_usage_total=1.8,
                       p95_latency_seconds=2.0)
    canary = ArmTotals(ready_pods=2, pods_reporting=1, waiting_total=3, running_total=4, kv_usage_total=0.5,
                       p95_latency_seconds=3.5)
    samples = samples_from_totals([stable, canary])
    assert len(samples.replicas) == 5 and samples.replicas[-1] == ReplicaSample()  # the silent canary pod
    assert samples.p95_latency_seconds == 3.5  # the worse arm
    per_pod = Samples((ReplicaSample(3, 4, 0.6),) * 3 + (ReplicaSample(3, 4, 0.5), ReplicaSample()))
    spec = autoscaling({"waitingRequestsPerReplica": 2, "kvCacheUsage": 0.7}, maxReplicas=10)
    counts = ReplicaCounts(current=5, ready=5)
    assert decide(spec, AutoscalerState(), samples, counts, T0).desired == \
        decide(spec, AutoscalerState(), per_pod, counts, T0).desired == 6
    assert set(LOAD_TEMPLATES) == {"pods_reporting", "waiting_total", "running_total", "kv_usage_total"}
    assert all("{$sel}" in q and "[$window]" in q for q in LOAD_TEMPLATES.values())


def test_a_mid_rollout_scale_keeps_the_weight() -> None:
    """The autoscaler decides the total; the rollout's split (weights.step_split) shares it by the weight."""
    from localattn_operator.weights import step_split

    counts, _ = run(autoscaling(maxReplicas=8), load(16), ticks=3, start=4)
    assert counts == [8, 8, 8]
    before, after = step_split(4, 25, surge=0), step_split(counts[-1], 25, surge=0)
    assert (before.stable, before.canary) == (3, 1) and (after.stable, after.canary) == (6, 2)
    assert after.total == 8  # maxSurge 0: the arms never add up to more than maxReplicas


def test_plan_from_what_the_reconciler_observes() -> None:
    spec = autoscaling(maxReplicas=4)
    no_gpu = PendingPod("p-3", "Unschedulable", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    starting = PendingPod("p-4", "ContainerCreating", "scheduled on localattn-gpu-0, starting")
    first = plan(spec, 2, None, waiting(12, 2), ready=2, pending=[], now=T0)
    assert (first.replicas, first.status.desired_replicas) == (4, 4)  # the operator's own write: no revert
    assert [e.reason for e in first.events] == ["ScaledUp"]
    # Next pass: a hand scale to 1 while two pods wait for GPUs and one is merely starting.
    second = plan(spec, 1, first.status, waiting(40, 1), ready=1, pending=[no_gpu, starting],
                  now=T0 + timedelta(seconds=15))
    assert second.replicas == 4 and second.status.gpu_limited
    assert second.status.gpu_limited_message is not None and "Insufficient nvidia.com/gpu" in second.status.gpu_limited_message
    assert [e.reason for e in second.events] == ["ScaleReverted", "GPULimited"]
    assert waiting_for_gpus([starting]).pending_no_gpu == 0  # starting is not GPU-limited


def test_a_pass_without_a_new_measurement_holds_but_still_enforces() -> None:
    """The reconciler decides on each measurement once; other passes (a child changed, a resync) hold the
    count, keep the last measured headroom, and still revert a hand scale and apply the bounds."""
    spec = autoscaling({"p95LatencySeconds": 2}, maxReplicas=8)
    slow = Samples((ReplicaSample(waiting=0, running=4, kv_usage=0.2),) * 2, p95_latency_seconds=4.0)
    first = plan(spec, 2, None, slow, ready=2, pending=[], now=T0)
    assert first.status.desired_replicas == 4 and first.measured and first.status.headroom_per_replica == 16
    again = plan(spec, 4, first.status, None, ready=2, pending=[], now=T0 + timedelta(seconds=1))
    assert again.status.desired_replicas == 4 and again.replicas is None and not again.measured  # not 8
    assert again.events == () and again.status.headroom_per_replica == 16
    assert again.status.last_decision == first.status.last_decision
    by_hand = plan(spec, 7, again.status, None, ready=4, pending=[], now=T0 + timedelta(seconds=2))
    assert by_hand.replicas == 4 and [e.reason for e in by_hand.events] == ["ScaleReverted"]
    narrowed = plan(autoscaling({"p95LatencySeconds": 2}, maxReplicas=3), 4, by_hand.status, None, ready=4,
                    pending=[], now=T0 + timedelta(seconds=3))
    assert narrowed.replicas == 3 and narrowed.decision.signal == BOUNDS
    assert [e.reason for e in narrowed.events] == ["ScaledDown"]
