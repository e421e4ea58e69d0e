"""Weight -> replica split and the safe path between splits (pure; properties with hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localattn_operator.weights import (
    RouteWeights,
    Split,
    achieved_weight,
    deployment_strategy,
    drain,
    resolve_surge,
    route_weights,
    step_split,
    transfer,
)


@pytest.mark.parametrize(("surge", "replicas", "pods"), [(0, 4, 0), (2, 4, 2), ("25%", 4, 1), ("25%", 5, 2),
                                                       ("100%", 3, 3), ("0%", 8, 0), ("3", 1, 3)])
def test_resolve_surge_rounds_percentages_up_like_a_deployment(surge: int | str, replicas: int, pods: int) -> None:
    assert resolve_surge(surge, replicas) == pods


@pytest.mark.parametrize("bad", ["abc", "-1", "%", "10 %", -1])
def test_resolve_surge_rejects_garbage(bad: int | str) -> None:
    with pytest.raises(ValueError, match="maxSurge"):
        resolve_surge(bad, 4)


@pytest.mark.parametrize(
    ("replicas", "weight", "surge", "split"),
    [
        (4, 10, 1, Split(4, 1)),  # the surge pod is the canary; stable keeps everything
        (4, 25, 1, Split(4, 1)),
        (4, 50, 1, Split(2, 3)),  # beyond the surge: total N + surge split by weight
        (4, 50, 4, Split(4, 4)),
        (10, 10, 0, Split(9, 1)),  # maxSurge 0: taken from stable
        (10, 25, 0, Split(7, 3)),
        (10, 50, 0, Split(5, 5)),
        (2, 10, 0, Split(1, 1)),  # at least one canary pod, and one stable while weight < 100
        (4, 100, 2, Split(0, 4)),
        (0, 50, 1, Split(0, 0)),
    ],
)
def test_step_split_replicas_router(replicas: int, weight: int, surge: int, split: Split) -> None:
    assert step_split(replicas, weight, surge) == split


def test_step_split_gateway_sizes_arms_for_their_share() -> None:
    assert step_split(10, 10, 1, "gatewayAPI") == Split(10, 1)
    assert step_split(10, 50, 0, "gatewayAPI") == Split(5, 5)
    assert step_split(10, 100, 10, "gatewayAPI") == Split(10, 10)  # stable stays warm: instant rollback
    assert step_split(4, 0, 0, "gatewayAPI") == Split(4, 1)  # dark canary: probed, unrouted


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200), st.integers(1, 99), st.integers(0, 50))
def test_replicas_router_split_properties(replicas: int, weight: int, surge: int) -> None:
    split = step_split(replicas, weight, surge)
    assert split.canary >= 1  # at least one canary pod while weight > 0
    assert split.total <= replicas + surge  # the surge budget holds
    assert split.total >= replicas  # capacity never below spec.replicas
    assert split.stable <= replicas
    if replicas >= 2:
        assert split.stable >= 1
    if surge == 0:
        assert split.total == replicas  # maxSurge 0 keeps the GPU count
    if replicas >= 20 and surge >= replicas:
        assert abs(achieved_weight(split) - weight) <= 5 + 100 / replicas


def _walk(replicas: int, surge: int, start: Split, target: Split, ready_lag: int) -> list[tuple[Split, Split]]:
    """Drive `transfer` with pods that become ready `ready_lag` passes after being planned; (planned, ready)."""
    current, ready = start, start
    history = [(current, ready)]
    queue: list[Split] = []
    for _ in range(4 * (replicas + surge) + 10):
        planned = transfer(replicas, surge, target, current, ready)
        queue.append(planned)
        # scale-downs take effect at once (ready pods removed), scale-ups after the lag
        arrived = queue[-1 - ready_lag] if len(queue) > ready_lag else ready
        ready = Split(min(planned.stable, max(ready.stable, arrived.stable) if planned.stable >= ready.stable else planned.stable),
                      min(planned.canary, max(ready.canary, arrived.canary) if planned.canary >= ready.canary else planned.canary))
        current = planned
        history.append((current, ready))
        if current == target and ready == target:
            break
    return history


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 30), st.integers(0, 8), st.integers(1, 99), st.integers(0, 2), st.booleans())
def test_transfer_keeps_capacity_and_budget_and_terminates(replicas: int, surge: int, weight: int, lag: int,
                                                           promote: bool) -> None:
    start = step_split(replicas, weight, surge)
    target = Split(0, replicas) if promote else Split(replicas, 0)
    if not promote:  # handover: the stable arm takes the capacity back from the canary arm
        start = Split(0, replicas)
    history = _walk(replicas, surge, start, target, lag)
    floor = replicas if surge > 0 else replicas - 1  # maxSurge 0: one pod must go first, its GPU is needed
    for planned, ready in history:
        assert planned.total <= max(replicas + surge, start.total)  # never above the budget
        assert ready.total >= min(floor, replicas)  # ready serving pods never below spec.replicas (surge > 0)
    assert history[-1] == (target, target)


def test_transfer_never_scales_a_shrinking_arm_up() -> None:
    # a canary pod died during the promotion: stable keeps what it has, it is not scaled back up
    assert transfer(4, 1, Split(0, 4), current=Split(2, 3), ready=Split(2, 1)) == Split(2, 3)


def test_transfer_with_maxsurge_zero_moves_one_pod_at_a_time() -> None:
    # a stable pod goes first; its GPU is reused only on a later pass, once that pod was planned away
    assert transfer(4, 0, Split(0, 4), current=Split(3, 1), ready=Split(3, 1)) == Split(2, 1)
    assert transfer(4, 0, Split(0, 4), current=Split(2, 1), ready=Split(2, 1)) == Split(2, 2)
    assert transfer(4, 0, Split(0, 4), current=Split(2, 2), ready=Split(2, 1)) == Split(2, 2)  # waits for ready


def test_achieved_weight_is_ready_canary_over_ready_total() -> None:
    assert achieved_weight(Split(9, 1)) == 10
    assert achieved_weight(Split(4, 0)) == 0
    assert achieved_weight(Split(0, 0)) == 0


def test_route_weights_never_send_traffic_to_an_arm_without_available_pods() -> None:
    assert route_weights(25, Split(4, 1)) == RouteWeights(75, 25)
    assert route_weights(25, Split(4, 0)) == RouteWeights(100, 0)  # Argo's rule
    assert route_weights(25, Split(0, 2)) == RouteWeights(0, 100)
    assert route_weights(150, Split(1, 1)) == RouteWeights(0, 100)
    assert route_weights(50, Split(10, 1), needed=Split(5, 5)) == RouteWeights(90, 10)  # 1 of 5 canary pods up
    assert route_weights(50, Split(10, 5), needed=Split(5, 5)) == RouteWeights(50, 50)


def test_deployment_strategy_stays_within_the_budget() -> None:
    assert deployment_strategy(0) == {"maxSurge": 0, "maxUnavailable": 1}
    assert deployment_strategy(3) == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize(
    ("replicas", "surge", "current", "ready", "planned"),
    [
        (4, 1, Split(4, 1), Split(4, 1), Split(4, 0)),  # stable kept everything: the canary goes at once
        (10, 0, Split(5, 5), Split(5, 5), Split(6, 4)),  # maxSurge 0: one GPU at a time back to stable
        (10, 0, Split(5, 5), Split(5, 0), Split(10, 0)),  # canary pods not ready serve nobody: gone at once
        (10, 2, Split(2, 6), Split(2, 6), Split(6, 6)),  # surge: stable regrows while ready canary pods serve
        (10, 2, Split(6, 6), Split(8, 6), Split(10, 2)),
    ],
)
def test_drain_keeps_only_ready_canary_pods_that_stable_still_needs(replicas: int, surge: int, current: Split,
                                                                  ready: Split, planned: Split) -> None:
    assert drain(replicas, surge, current, ready) == planned


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 30), st.integers(0, 8), st.integers(1, 99), st.integers(0, 2))
def test_drain_terminates_within_budget(replicas: int, surge: int, weight: int, lag: int) -> None:
    current = ready = step_split(replicas, weight, surge)
    pending: list[Split] = []
    for _ in range(4 * replicas + 10):
        planned = drain(replicas, surge, current, ready)
        assert planned.total <= max(replicas + surge, current.total)
        assert planned.canary <= current.canary  # the canary only shrinks
        pending.append(planned)
        arrived = pending[-1 - lag] if len(pending) > lag else ready
        ready = Split(min(planned.stable, max(ready.stable, arrived.stable)), min(planned.canary, ready.canary))
        current = planned
        if planned == Split(replicas, 0) and ready.stable == replicas:
            break
    assert current == Split(replicas, 0)


def test_transfer_waits_for_terminating_pods_to_free_their_gpus() -> None:
    """maxSurge 0 promises the GPU count never rises: a stable pod being deleted still holds its GPU, so the
    canary's replacement is planned only once it is gone (on a cluster with spare GPUs it would start at once)."""
    assert transfer(2, 0, Split(1, 1), current=Split(2, 0), ready=Split(2, 0)) == Split(1, 0)  # stable first
    assert transfer(2, 0, Split(1, 1), current=Split(1, 0), ready=Split(1, 0), held=1) == Split(1, 0)  # not gone
    assert transfer(2, 0, Split(1, 1), current=Split(1, 0), ready=Split(1, 0), held=0) == Split(1, 1)
    # with a surge the held pods count against the budget too: replicas + surge GPUs at most
    assert transfer(4, 1, Split(2, 2), current=Split(4, 0), ready=Split(4, 0), held=1) == Split(4, 0)
    assert transfer(4, 1, Split(2, 2), current=Split(4, 0), ready=Split(4, 0)) == Split(4, 1)
